"""Settings that change rarely (an account's webhook and rate-limit settings, the route table, the price table),
cached per container for a short time, so a consumer that handles many records, or an api container many sends,
does not read the same item each time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sms_gateway.domain.models import Account
from sms_gateway.ports import AccountLookup, PriceBook

if TYPE_CHECKING:
    from sms_gateway.domain.pricing import PriceTable

T = TypeVar("T")

# How stale a cached setting may be: a change an operator or client makes reaches running consumers within
# this time (as an upstream's Parameter Store configuration does within CONFIG_MAX_AGE). Never used for credits.
SETTINGS_MAX_AGE_SECONDS = 30.0
# How stale a setting may be when what was cached would drop something (an account without the webhook URL a
# notification needs may have set it since): read again if older, so a container rereads it at most this often.
RECHECK_SECONDS = 1.0
# The most values a cache keeps (about 3 KB an account's settings: 30 MB): past it, the longest loaded go first.
# Values older than the cache's max age go anyway, so a warm container holds what it read within that time only.
MAX_ENTRIES = 10_000


class _Load:
    """One load of a key in flight; the threads that miss the key meanwhile wait for it and take its answer."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def answer(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class SingleFlight:
    """Loads by key, for threads that miss the same key at once to load it once (a batch's records, handled
    concurrently, would otherwise all read, or ask KMS for, the value they share): the others wait for that load and
    take what it gave, its value or its error. A failure is shared too: a read of a table that fails after botocore's
    retries (seconds of back-off) fails once for all of them, not once for each, one after another, which took a
    batch of ten records past its function's timeout. Nothing is kept once a load is done, so this holds nothing for
    the keys a warm container has seen."""

    def __init__(self) -> None:
        self._loads: dict[Hashable, _Load] = {}
        self._lock = threading.Lock()

    def load(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            in_flight = self._loads.get(key)
            if in_flight is None:
                mine = self._loads[key] = _Load()
        if in_flight is not None:
            answer: T = in_flight.answer()
            return answer
        try:
            mine.value = load()
        except BaseException as error:
            mine.error = error
            raise
        finally:
            with self._lock:
                del self._loads[key]
            mine.done.set()
        return mine.value


class TtlCache:
    """Values by key, each kept for `max_age` seconds after it was loaded; None is never cached. Threads that miss
    the same key at once load it once (SingleFlight). Values past the max age are dropped, not only reloaded when
    asked for, and at most `max_entries` are kept: a warm container that serves many accounts holds those it read
    within the max age, not every account it ever read. A `max_age` given to `get` may only be shorter."""

    def __init__(
        self,
        max_age: float = SETTINGS_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.max_age = max_age
        self.clock = clock
        self.max_entries = max_entries
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._loading = SingleFlight()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any], *, max_age: float | None = None) -> Any:
        """The value cached for `key`, loaded first when none was loaded within `max_age` (default: the cache's)."""
        fresh = self._fresh(key, max_age)
        if fresh is not None:
            return fresh[0]
        return self._loading.load(key, partial(self._load, key, load, max_age))

    def _load(self, key: Hashable, load: Callable[[], Any], max_age: float | None) -> Any:
        fresh = self._fresh(key, max_age)  # loaded by another thread since this one looked
        if fresh is not None:
            return fresh[0]
        now = self.clock()
        value = load()
        if value is not None:
            with self._lock:
                # Last in the order of loading, which is the order values expire in.
                self._values.pop(key, None)
                self._values[key] = (now, value)
                self._drop_expired(now)
        return value

    def _drop_expired(self, now: float) -> None:
        """Under the lock: drops the values loaded longest ago while they are past the max age or too many."""
        while self._values:
            oldest = next(iter(self._values))
            if now - self._values[oldest][0] < self.max_age and len(self._values) <= self.max_entries:
                return
            del self._values[oldest]

    def _fresh(self, key: Hashable, max_age: float | None = None) -> tuple[Any] | None:
        with self._lock:
            found = self._values.get(key)
        if found is not None and self.clock() - found[0] < (self.max_age if max_age is None else max_age):
            return (found[1],)
        return None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class CachedAccountSettings:
    """An account's settings (webhook URLs, token and secret, rate limit) through the cache. Its credits may be
    up to SETTINGS_MAX_AGE_SECONDS old: read the store itself for the balance."""

    def __init__(self, accounts: AccountLookup, cache: TtlCache) -> None:
        self.accounts = accounts
        self.cache = cache

    def get_account(self, account_id: str, *, max_age: float | None = None) -> Account | None:
        load = partial(self.accounts.get_account, account_id)
        found: Account | None = self.cache.get(("account", account_id), load, max_age=max_age)
        return found

    def recheck(self, account_id: str) -> Account | None:
        """The account read again unless it was within RECHECK_SECONDS: for a setting whose absence would drop
        something (a webhook URL set since the cached read)."""
        return self.get_account(account_id, max_age=RECHECK_SECONDS)


class CachedPriceBook:
    """The operator's price table through the cache: a price change applies to the sends (and quotes) of every
    container within SETTINGS_MAX_AGE_SECONDS, as a route or rate-limit change does, instead of costing each send
    a read. The credits themselves are never cached: each send reserves them with a conditional write."""

    def __init__(self, prices: PriceBook, cache: TtlCache) -> None:
        self.prices = prices
        self.cache = cache

    def price_table(self) -> PriceTable:
        table: PriceTable = self.cache.get("prices", self.prices.price_table)
        return table

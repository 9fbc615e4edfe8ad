"""Settings that change rarely (an account's webhook and rate-limit settings, the route table, the price table),
cached per container for a short time, so a consumer that handles many records, or an api container many sends,
does not read the same item each time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

from sms_gateway.domain.models import Account
from sms_gateway.ports import AccountLookup, PriceBook

if TYPE_CHECKING:
    from sms_gateway.domain.pricing import PriceTable

# How stale a cached setting may be: a change an operator or client makes reaches running consumers within
# this time (as an upstream's Parameter Store configuration does within CONFIG_MAX_AGE). Never used for credits.
SETTINGS_MAX_AGE_SECONDS = 30.0
# How stale a setting may be when what was cached would drop something (an account without the webhook URL a
# notification needs may have set it since): read again if older, so a container rereads it at most this often.
RECHECK_SECONDS = 1.0


class KeyedLocks:
    """A lock per key, for threads that miss the same key at once to load it once: the others wait for that load
    (a batch's records, handled concurrently, would otherwise all read, or ask KMS for, the value they share).
    Its keys are few (accounts' settings and sealed secrets), so their locks are kept."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def of(self, key: Hashable) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())


class TtlCache:
    """Values by key, each kept for `max_age` seconds after it was loaded; None is never cached. Threads that miss
    the same key at once load it once (KeyedLocks)."""

    def __init__(self, max_age: float = SETTINGS_MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._loading = KeyedLocks()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any], *, max_age: float | None = None) -> Any:
        """The value cached for `key`, loaded first when none was loaded within `max_age` (default: the cache's)."""
        fresh = self._fresh(key, max_age)
        if fresh is not None:
            return fresh[0]
        with self._loading.of(key):
            fresh = self._fresh(key, max_age)  # loaded by another thread while this one waited
            if fresh is not None:
                return fresh[0]
            now = self.clock()
            value = load()
            if value is not None:
                with self._lock:
                    self._values[key] = (now, value)
            return value

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

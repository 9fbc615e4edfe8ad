"""The per-container settings cache: values live for their max age, then are read again; None is not kept."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from collections.abc import Callable

from sms_gateway.caching import CachedAccountSettings, TtlCache
from tests.fakes import Clock


class CountingAccounts:
    def __init__(self, known: dict[str, object]) -> None:
        self.known = known
        self.reads = 0

    def get_account(self, account_id: str) -> object | None:
        self.reads += 1
        return self.known.get(account_id)


def test_a_setting_is_read_once_within_its_max_age_and_again_after_it():
    clock = Clock()
    accounts = CountingAccounts({"a": "settings of a"})
    cached = CachedAccountSettings(accounts, TtlCache(max_age=30, clock=clock))  # type: ignore[arg-type]
    # Given a first read
    assert cached.get_account("a") == "settings of a"
    # When the same account is read again within the max age, it comes from the cache
    clock.now += 29
    assert cached.get_account("a") == "settings of a"
    assert accounts.reads == 1
    # And once the max age has passed, a change made meanwhile is seen
    accounts.known["a"] = "changed settings of a"
    clock.now += 2
    assert cached.get_account("a") == "changed settings of a"
    assert accounts.reads == 2


def test_a_recheck_reads_the_account_again_once_a_second_at_most():
    clock = Clock()
    accounts = CountingAccounts({"a": "no webhook URL"})
    cached = CachedAccountSettings(accounts, TtlCache(max_age=30, clock=clock))  # type: ignore[arg-type]
    assert cached.get_account("a") == "no webhook URL"
    accounts.known["a"] = "a webhook URL"
    # Within a second of the read, a recheck takes what was cached; after it, the account as it is now
    clock.now += 0.5
    assert cached.recheck("a") == "no webhook URL"
    clock.now += 1
    assert cached.recheck("a") == "a webhook URL"
    # And what it read is cached for the others, for the cache's own max age
    clock.now += 20
    assert cached.get_account("a") == "a webhook URL"
    assert accounts.reads == 2


def test_an_unknown_account_is_not_cached_so_a_new_account_is_found_at_once():
    clock = Clock()
    accounts = CountingAccounts({})
    cached = CachedAccountSettings(accounts, TtlCache(max_age=30, clock=clock))  # type: ignore[arg-type]
    assert cached.get_account("new") is None
    accounts.known["new"] = "settings of new"
    assert cached.get_account("new") == "settings of new"


def test_clear_forgets_everything():
    cache = TtlCache(max_age=30, clock=Clock())
    loads = []
    cache.get("k", lambda: loads.append(1) or "v")
    cache.clear()
    cache.get("k", lambda: loads.append(1) or "v")
    assert len(loads) == 2


def _ten_threads_ask_while_the_first_load_runs(answer: Callable[[], str]) -> tuple[list[str], list[BaseException], int]:
    """Ten threads get one key of a cache; its first load is held until the others have asked, then answers as
    `answer` does. What they got, what they raised, and how many loads there were."""
    cache = TtlCache(max_age=30)
    loads: list[int] = []
    release = threading.Event()

    def load() -> str:
        loads.append(1)
        release.wait(timeout=10)
        return answer()

    found: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            found.append(cache.get(("account", "a"), load))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for thread in threads:
        thread.start()
    while not loads:
        time.sleep(0.01)
    time.sleep(0.2)  # the other threads' time to ask (without the single load, they would all be reading too)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    return found, errors, len(loads)


def test_threads_missing_one_key_at_once_load_it_once():
    # Given ten threads asking for the same key while its first load is still reading
    found, errors, loads = _ten_threads_ask_while_the_first_load_runs(lambda: "settings")
    # Then the key was read once, and every thread got its value
    assert found == ["settings"] * 10
    assert not errors
    assert loads == 1


def test_threads_waiting_on_a_load_that_fails_get_its_error_without_loading_again():
    def table_not_answering() -> str:
        # As a read of a throttled or unreachable table: it fails only after botocore's retries (seconds each).
        raise ConnectionError("the table did not answer")

    # Given ten records of one account asking for its settings while the first read is still failing
    found, errors, loads = _ten_threads_ask_while_the_first_load_runs(table_not_answering)
    # Then the store was asked once, and every record failed with its error at once (the record goes back to the
    # queue), instead of each asking again after the others' failures (ten times botocore's retries, one after
    # another, took a batch past the notifier's 30 s timeout)
    assert not found
    assert [str(error) for error in errors] == ["the table did not answer"] * 10
    assert loads == 1


class CountingPrices:
    def __init__(self, table: object) -> None:
        self.table = table
        self.reads = 0

    def price_table(self) -> object:
        self.reads += 1
        return self.table


def test_the_price_table_is_read_once_per_max_age_not_once_per_send():
    from sms_gateway.caching import CachedPriceBook

    clock = Clock()
    prices = CountingPrices("N at 2 credits")
    book = CachedPriceBook(prices, TtlCache(max_age=30, clock=clock))  # type: ignore[arg-type]
    # Given a container pricing a hundred sends within the max age
    assert {book.price_table() for _ in range(100)} == {"N at 2 credits"}
    # Then the table was read once
    assert prices.reads == 1
    # And an operator's new price is used once the max age has passed
    prices.table = "N at 3 credits"
    clock.now += 31
    assert book.price_table() == "N at 3 credits"
    assert prices.reads == 2


def _held_after(work: Callable[[], object]) -> int:
    """Bytes still allocated once `work` has run, what it returns still referenced."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        kept = work()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    del kept
    return held


def test_a_warm_container_keeps_only_the_settings_read_within_the_max_age():
    clock = Clock()

    def serve_many_accounts() -> TtlCache:
        cache = TtlCache(max_age=30, clock=clock)
        # Given a notifier container that reads the settings of 2,000 accounts, one every 0.1 s (200 s in all),
        # each taken as 10 KB
        for number in range(2_000):
            cache.get(("account", f"account-{number}"), lambda: bytes(10_000))
            clock.now += 0.1
        return cache

    # Then it holds no more than the 300 read within the last 30 s (3 MB), not all 2,000 (20 MB)
    assert _held_after(serve_many_accounts) < 5_000_000


def test_a_cache_keeps_at_most_its_max_entries_the_last_loaded():
    clock = Clock()
    cache = TtlCache(max_age=30, clock=clock, max_entries=100)
    loads: list[str] = []

    def load(name: str) -> str:
        loads.append(name)
        return f"settings of {name}"

    # Given more accounts read within the max age than the cache keeps
    for number in range(1_000):
        cache.get(number, lambda number=number: load(f"account-{number}"))
    # Then the last read are still cached, and the first ones are read again
    assert cache.get(999, lambda: load("again")) == "settings of account-999"
    assert cache.get(900, lambda: load("again")) == "settings of account-900"
    assert cache.get(0, lambda: load("again")) == "settings of again"
    # And a value read again counts as the last loaded: it is kept while older ones go
    for number in range(2_000, 2_099):
        cache.get(number, lambda number=number: load(f"account-{number}"))
    assert cache.get(0, lambda: load("once more")) == "settings of again"

"""The local stack's invocation lock serves callers in the order they came, so none waits behind later ones."""

from __future__ import annotations

import threading
import time

from sms_gateway_tools.localstack.lambdas import FairLock


def queue_callers(lock: FairLock, count: int, served: list[int]) -> list[threading.Thread]:
    """Starts `count` callers one after another, each queued (holding its ticket) before the next starts; each
    appends its number to `served` once it has the lock."""

    def caller(number: int) -> None:
        with lock:
            served.append(number)

    threads = []
    for number in range(count):
        tickets_before = lock._next_ticket
        thread = threading.Thread(target=caller, args=(number,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while lock._next_ticket == tickets_before and time.monotonic() < deadline:  # it has taken its place
            time.sleep(0.001)
    return threads


def test_waiters_get_the_lock_in_the_order_they_asked_for_it():
    # Given a held lock and five callers queued behind it one after another
    lock = FairLock()
    lock.__enter__()
    served: list[int] = []
    threads = queue_callers(lock, 5, served)
    # When the holder lets go
    lock.__exit__(None, None, None)
    for thread in threads:
        thread.join(5)
    # Then they were served first come, first served
    assert served == [0, 1, 2, 3, 4]


def test_a_holder_that_lets_go_and_asks_again_queues_behind_the_waiter():
    # Given a held lock and a caller waiting for it (the stream of callbacks against one client's send: with
    # threading.Lock the thread that lets go takes it straight back, and the waiter starves)
    lock = FairLock()
    order: list[str] = []
    lock.__enter__()

    def waiter() -> None:
        with lock:
            order.append("waiter")

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while lock._next_ticket < 2 and time.monotonic() < deadline:  # the waiter has taken its place
        time.sleep(0.001)
    # When the holder lets go and asks again, three times over
    for _ in range(3):
        lock.__exit__(None, None, None)
        lock.__enter__()
        order.append("holder")
    lock.__exit__(None, None, None)
    thread.join(5)
    # Then the waiter went first
    assert order == ["waiter", "holder", "holder", "holder"]


def test_a_lock_of_several_permits_lets_that_many_in_and_the_rest_in_the_order_they_asked():
    # Given a lock of two permits, both taken
    lock = FairLock(permits=2)
    lock.__enter__()
    lock.__enter__()
    served: list[int] = []
    threads = queue_callers(lock, 3, served)
    # Then nobody else is in while both are held
    time.sleep(0.05)
    assert served == []
    # When one holder lets go, the first waiter gets in (and, leaving, lets the next in), in the order they asked
    lock.__exit__(None, None, None)
    for thread in threads:
        thread.join(5)
    assert served == [0, 1, 2]

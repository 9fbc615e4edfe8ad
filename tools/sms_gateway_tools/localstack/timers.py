"""Run callables after a delay on a bounded pool: one timer thread and a few workers, not a thread per job."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger("sms_gateway_tools.localstack.timers")


class DelayedExecutor:
    def __init__(self, name: str, max_workers: int = 8) -> None:
        self._name = name
        self._max_workers = max_workers
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._stopping = False
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix=f"{self._name}-worker")
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-timer", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, job: Callable[[], None]) -> bool:
        """Schedules `job`; returns False (and drops it) when the executor is stopping."""
        with self._condition:
            if self._stopping or self._pool is None:
                return False
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), next(self._counter), job))
            self._condition.notify()
        return True

    def pending(self) -> int:
        with self._condition:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._condition.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                if self._stopping:
                    return
                _, _, job = heapq.heappop(self._heap)
            pool = self._pool
            if pool is None:
                return
            try:
                pool.submit(self._guard, job)
            except RuntimeError:  # the pool was shut down meanwhile
                return

    @staticmethod
    def _guard(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:
            logger.exception("delayed job failed")

    def stop(self, timeout: float = 10.0) -> None:
        with self._condition:
            self._stopping = True
            self._heap.clear()
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

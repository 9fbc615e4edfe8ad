"""The upstream client's plumbing: a thread pool as large as the in-flight limit for the store calls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sms_gateway.adapters import http
from sms_gateway.settings import get_settings


def test_store_calls_run_as_concurrently_as_the_dispatch_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncio's default executor has min(32, cores + 4) threads: fewer than the dispatcher's in-flight submits.
    monkeypatch.setenv("DISPATCH_CONCURRENCY", "40")
    get_settings.cache_clear()
    all_in = threading.Barrier(40, timeout=30)

    async def forty_blocking_calls() -> list[int]:
        return await asyncio.gather(*(asyncio.to_thread(all_in.wait) for _ in range(40)))

    try:
        # Each call waits until all 40 are running at once: with fewer threads the barrier breaks instead.
        assert sorted(http.run(forty_blocking_calls())) == list(range(40))
    finally:
        get_settings.cache_clear()

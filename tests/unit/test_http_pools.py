"""The upstream client's plumbing: small connection pools that never make a submit wait while the dispatcher is
under its in-flight limit, and a thread pool as large as that limit for the store calls."""

from __future__ import annotations

import asyncio
import ssl
import threading

import httpx
import pytest

from sms_gateway.adapters import http
from sms_gateway.settings import get_settings


class HeldPool(httpx.AsyncBaseTransport):
    """Answers once the test lets go, and remembers how many requests it held at once against its limit."""

    def __init__(self, limits: httpx.Limits, release: asyncio.Event) -> None:
        self.limit = limits.max_connections
        self.release = release
        self.holding = 0
        self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return httpx.Response(200, json={"ok": True})


def test_requests_up_to_the_connection_count_spread_over_pools_without_exceeding_any_pool() -> None:
    async def scenario() -> tuple[list[HeldPool], list[int], list[int]]:
        release = asyncio.Event()
        pools: list[HeldPool] = []

        def pool(limits: httpx.Limits) -> HeldPool:
            pools.append(HeldPool(limits, release))
            return pools[-1]

        transport = http.ShardedTransport(20, per_pool=8, pool=pool)
        async with httpx.AsyncClient(transport=transport) as client:
            sends = [asyncio.ensure_future(client.post("http://upstream.test/sms/send")) for _ in range(20)]
            while sum(p.holding for p in pools) < 20:
                await asyncio.sleep(0)
            while_held = transport.in_flight
            release.set()
            answers = await asyncio.gather(*sends)
        assert all(answer.status_code == 200 for answer in answers)
        return pools, while_held, transport.in_flight

    pools, while_held, after = asyncio.run(scenario())
    # 20 connections in pools of at most 8: three pools of 7
    assert [p.limit for p in pools] == [7, 7, 7]
    # All 20 went out at once, none over its pool's connections (so none waited for one)
    assert sum(while_held) == 20
    assert all(p.most <= p.limit for p in pools)
    # And every response, once read, gave its pool's place back
    assert after == [0, 0, 0]


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


def test_the_upstream_pools_load_the_ca_bundle_once_and_verify_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading the CA bundle costs ~40 ms of CPU: once per pool made the dispatcher's first invocation a second slower.
    made: list[ssl.SSLContext] = []
    create = httpx.create_ssl_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        context = create(*args, **kwargs)  # type: ignore[arg-type]
        made.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    transport = http.ShardedTransport(64)
    pools = transport._pools
    assert len(pools) == 32
    assert len(made) == 1
    # Every pool verifies certificates with that one context (hostname checks on).
    contexts = {id(pool._pool._ssl_context) for pool in pools}  # type: ignore[attr-defined]
    assert contexts == {id(made[0])}
    assert made[0].verify_mode == ssl.CERT_REQUIRED and made[0].check_hostname

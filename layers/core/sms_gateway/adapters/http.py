"""One pooled httpx client and one event loop per container thread, reused across invocations."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from sms_gateway.settings import get_settings

T = TypeVar("T")
_local = threading.local()
# httpcore's pool scans every connection it holds each time a request is queued or released (quadratic CPU in
# the pool's size, a socket-readable check per idle connection): past this many connections, several small pools
# serve one client (see ShardedTransport). Pools of 2 took about 20% less CPU per submit than pools of 8 at 64 in
# flight (bench dispatcher_throughput, httpx_cpu_ms_per_submit); picking the least busy of many pools costs little.
CONNECTIONS_PER_POOL = 2


def _loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        _local.workers = 0
    # Store calls run in the loop's default executor (asyncio.to_thread): its default size, min(32, cores + 4),
    # would cap the dispatcher's concurrent DynamoDB calls far below its in-flight submits.
    workers = get_settings().dispatch_concurrency
    if _local.workers != workers:
        previous: ThreadPoolExecutor | None = getattr(_local, "executor", None)
        _local.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sms-gateway-io")
        loop.set_default_executor(_local.executor)
        _local.workers = workers
        if previous is not None:
            previous.shutdown(wait=False)
    return loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on this thread's long-lived loop: pooled connections survive between invocations."""
    return _loop().run_until_complete(coroutine)


def async_client() -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(_local, "client", None)
    if client is None:
        settings = get_settings()
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_read_timeout, connect=settings.upstream_connect_timeout, pool=30.0),
            transport=ShardedTransport(settings.dispatch_concurrency),
            follow_redirects=False,
        )
        _local.client = client
    return client


class ShardedTransport(httpx.AsyncBaseTransport):
    """`connections` connections in pools of at most CONNECTIONS_PER_POOL; each request goes to the pool with the
    fewest requests in flight, so while fewer than `connections` are in flight none waits for a connection."""

    def __init__(
        self,
        connections: int,
        per_pool: int = CONNECTIONS_PER_POOL,
        pool: Callable[[httpx.Limits], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        if pool is None:
            pool = _tls_pools()
        pools = max(1, -(-connections // per_pool))
        size = -(-connections // pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pools = [pool(limits) for _ in range(pools)]
        self._in_flight = [0] * pools

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per pool (a response counts until its body is closed)."""
        return list(self._in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._in_flight[index] -= 1
            raise
        # The connection stays taken until the body is read and closed: only then does the pool count it free.
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, lambda: self._release(index)),
            extensions=response.extensions,
        )

    def _release(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _tls_pools() -> Callable[[httpx.Limits], httpx.AsyncBaseTransport]:
    """httpx transports that share one TLS context: each transport would otherwise load the CA bundle into its
    own (about 40 ms of CPU each; 32 pools made over a second of the dispatcher's first invocation). The context
    is the one httpx would make (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    context = httpx.create_ssl_context()
    return lambda limits: httpx.AsyncHTTPTransport(limits=limits, verify=context)


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None


def close() -> None:
    client: httpx.AsyncClient | None = getattr(_local, "client", None)
    if client is not None:
        run(client.aclose())
        _local.client = None


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds, or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)

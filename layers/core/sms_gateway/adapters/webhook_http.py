"""The SSRF guard's connect-time half: the pooled httpx client for client webhooks, vetting each address it dials."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from sms_gateway.adapters import http
from sms_gateway.domain.webhook_urls import is_forbidden_address
from sms_gateway.settings import get_settings

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
_local = threading.local()


class UnsafeWebhookTarget(Exception):
    """A webhook URL that leads somewhere a webhook must not go. Retrying cannot help: the URL must change."""

    def __init__(self, reason: str, *, host: str = "", address: str = "") -> None:
        super().__init__(reason)
        self.host = host
        self.address = address


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (tests replace this to point names anywhere)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # A link-local IPv6 answer comes back as "fe80::1%eth0"; the zone does not change whether it is allowed.
    return list(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses it if ANY answer is forbidden, then dials the vetted IP.

    httpcore starts TLS on the returned stream with the URL's host name, so SNI and the certificate check still
    use the name while the socket can only reach the address checked here: no second lookup to rebind."""

    def __init__(self, *, allow_local: bool, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_local = allow_local
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        addresses = await self._vetted(host, port, timeout)
        error: Exception = httpcore.ConnectError(f"{host} resolved to no address")
        for address in addresses:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise httpcore.ConnectTimeout(f"connecting to {host} timed out")
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=remaining, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failure:
                error = failure
        raise error

    async def _vetted(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve(host, port)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from error
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        if not self.allow_local:
            for address in addresses:
                if is_forbidden_address(ipaddress.ip_address(address)):
                    raise UnsafeWebhookTarget(
                        f"webhook URL resolves to a forbidden address {address}", host=host, address=address
                    )
        return addresses

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeWebhookTarget("webhooks never connect to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a connection pool that dials through GuardedBackend. No proxy: a proxy would
    resolve the name itself, after our check."""

    def __init__(
        self, *, allow_local: bool, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        ssl_context = httpx.create_ssl_context(verify=verify)  # once: loading the CA bundle is the slow part
        super().__init__(verify=ssl_context, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError(
                "httpx.AsyncHTTPTransport no longer keeps its httpcore pool in `_pool`: review the guard"
            )
        self.allow_local = allow_local
        self.backend = GuardedBackend(allow_local=allow_local)
        # httpx offers no way to hand its pool a network backend, so the pool it sends through (`_pool`, a private
        # attribute; tests/integration/test_webhook_ssrf.py fails if httpx stops using it) is replaced by an equal
        # one that has ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https" and not self.allow_local:
            raise UnsafeWebhookTarget(f"webhook URL must be https, not {request.url.scheme}")
        return await super().handle_async_request(request)


def new_webhook_client(*, allow_local: bool, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_local=allow_local, verify=verify),
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        follow_redirects=False,
        # Nothing from the environment: no proxy (it would resolve the name after our check), no .netrc credentials.
        trust_env=False,
    )


def webhook_client() -> httpx.AsyncClient:
    """This thread's client for client webhooks (use it on adapters/http.py's loop, via `http.run`)."""
    allow_local = get_settings().allow_http_webhooks
    cached: tuple[bool, httpx.AsyncClient] | None = getattr(_local, "client", None)
    if cached is None or cached[0] != allow_local:
        # Settings only change under tests and the local stack; a client is never reused across that change.
        cached = (allow_local, new_webhook_client(allow_local=allow_local))
        _local.client = cached
    return cached[1]


def close() -> None:
    cached: tuple[bool, httpx.AsyncClient] | None = getattr(_local, "client", None)
    if cached is not None:
        http.run(cached[1].aclose())
        _local.client = None

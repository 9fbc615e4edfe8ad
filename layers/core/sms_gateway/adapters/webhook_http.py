"""The SSRF guard's connect-time half: the pooled httpx client for client webhooks, vetting each address it dials."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence

import httpx

from sms_gateway.adapters import http
from sms_gateway.adapters.http_streams import StreamTransport, open_stream
from sms_gateway.domain.webhook_urls import is_forbidden_address
from sms_gateway.settings import get_settings

CONNECT_TIMEOUT = 3.0
# How long a dial to one of a name's addresses goes unanswered before the next is dialled beside it (RFC 8305's
# Connection Attempt Delay): a blackholed address must not take the whole CONNECT_TIMEOUT from the live ones.
ATTEMPT_DELAY = 0.25
READ_TIMEOUT = 10.0
# Connections kept per webhook origin by one thread's client: each notifier worker posts one record at a time.
CONNECTIONS_PER_ORIGIN = 10
_local = threading.local()

Connect = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


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


async def vetted_addresses(host: str, port: int, *, allow_local: bool) -> list[str]:
    """The addresses `host` resolves to; UnsafeWebhookTarget if ANY of them is forbidden (unless `allow_local`)."""
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise httpx.ConnectError(f"cannot resolve {host}: {error}") from error
    if not addresses:
        raise httpx.ConnectError(f"{host} resolved to no address")
    if not allow_local:
        for address in addresses:
            if is_forbidden_address(ipaddress.ip_address(address)):
                raise UnsafeWebhookTarget(
                    f"webhook URL resolves to a forbidden address {address}", host=host, address=address
                )
    return addresses


class GuardedTransport(StreamTransport):
    """Resolves the host itself, refuses it if ANY answer is forbidden, then dials the vetted IPs in order.

    TLS still asks for and checks the URL's host name (SNI and the certificate), while the socket can only reach an
    address checked here: no second lookup to rebind. Plain http only on the local stack (`allow_local`). No proxy
    (a proxy would resolve the name itself, after our check): the client is built with trust_env=False."""

    def __init__(
        self,
        *,
        allow_local: bool,
        ssl_context: ssl.SSLContext | None = None,
        connect: Connect = open_stream,
    ) -> None:
        super().__init__(CONNECTIONS_PER_ORIGIN, ssl_context=ssl_context)
        self.allow_local = allow_local
        self._connect = connect

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https" and not self.allow_local:
            raise UnsafeWebhookTarget(f"webhook URL must be https, not {request.url.scheme}")
        return await super().handle_async_request(request)

    async def _dial(
        self, host: str, port: int, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await vetted_addresses(host, port, allow_local=self.allow_local)
        return await first_connection(
            [functools.partial(self._connect, address, port, tls=tls, server_hostname=host) for address in addresses]
        )


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def first_connection(
    attempts: Sequence[Callable[[], Awaitable[Stream]]], *, delay: float = ATTEMPT_DELAY
) -> Stream:
    """The first of `attempts` (one per vetted address, in the resolver's order) to connect, each started `delay`
    after the one before it or as soon as that one fails, the earlier ones left running (Happy Eyeballs, RFC 8305):
    an address that swallows the attempt (a dead node behind a name with several) costs `delay`, not the whole
    connect timeout (the caller's bound on all of them). The others are cancelled, or closed if they connected too.
    The last OSError when none connects."""
    waiting = list(attempts)
    running: set[asyncio.Future[Stream]] = set()
    error: OSError | None = None
    try:
        while waiting or running:
            if waiting:
                running.add(asyncio.ensure_future(waiting.pop(0)()))
            done, running = await asyncio.wait(
                running, timeout=delay if waiting else None, return_when=asyncio.FIRST_COMPLETED
            )
            for attempt in done:
                failure = attempt.exception()
                if failure is None:
                    running |= done - {attempt}  # connected at the same moment: closed below
                    return attempt.result()
                if not isinstance(failure, OSError):
                    raise failure
                error = failure
    finally:
        await _abandon(running)
    assert error is not None  # vetted_addresses never answers an empty list
    raise error


async def _abandon(attempts: set[asyncio.Future[Stream]]) -> None:
    for attempt in attempts:
        attempt.cancel()
    for outcome in await asyncio.gather(*attempts, return_exceptions=True):
        if isinstance(outcome, tuple):
            outcome[1].close()


def new_webhook_client(*, allow_local: bool, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    return http.CookielessClient(
        transport=GuardedTransport(allow_local=allow_local, ssl_context=ssl_context),
        timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        follow_redirects=False,
        # A client's answer is only checked to be JSON: nothing to gain from compression, and a compressed answer is
        # one a hostile server can make inflate (the transport still caps what it decodes, as a server may compress
        # unasked).
        headers={"Accept-Encoding": "identity"},
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

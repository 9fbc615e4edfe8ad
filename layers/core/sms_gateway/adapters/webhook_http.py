"""The SSRF guard's connect-time half: the pooled httpx client for client webhooks, vetting each address it dials."""

from __future__ import annotations

import ipaddress
import ssl
import threading

import httpx

from sms_gateway.adapters import http
from sms_gateway.adapters.http_streams import Connect, StreamTransport, open_stream, resolve
from sms_gateway.domain.webhook_urls import is_forbidden_address
from sms_gateway.settings import get_settings

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
# Connections kept per webhook origin by one thread's client: each notifier worker posts one record at a time.
CONNECTIONS_PER_ORIGIN = 10
_local = threading.local()


class UnsafeWebhookTarget(Exception):
    """A webhook URL that leads somewhere a webhook must not go. Retrying cannot help: the URL must change."""

    def __init__(self, reason: str, *, host: str = "", address: str = "") -> None:
        super().__init__(reason)
        self.host = host
        self.address = address


async def vetted_addresses(host: str, port: int, *, allow_local: bool) -> list[str]:
    """The addresses `host` resolves to (through this module's `resolve`, which tests replace to point names
    anywhere); UnsafeWebhookTarget if ANY of them is forbidden (unless `allow_local`)."""
    try:
        addresses = await resolve(host, port)
    except OSError as error:
        raise httpx.ConnectError(f"cannot resolve {host}: {error}") from error
    if not allow_local:
        for address in addresses:
            # A link-local IPv6 address's zone ("fe80::1%eth0") does not change whether it is allowed.
            if is_forbidden_address(ipaddress.ip_address(address.partition("%")[0])):
                raise UnsafeWebhookTarget(
                    f"webhook URL resolves to a forbidden address {address}", host=host, address=address
                )
    return addresses


class GuardedTransport(StreamTransport):
    """Resolves the host itself, refuses it if ANY answer is forbidden, then dials the vetted IPs as StreamTransport
    dials any name's addresses (Happy Eyeballs).

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
        super().__init__(CONNECTIONS_PER_ORIGIN, ssl_context=ssl_context, connect=connect)
        self.allow_local = allow_local

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https" and not self.allow_local:
            raise UnsafeWebhookTarget(f"webhook URL must be https, not {request.url.scheme}")
        return await super().handle_async_request(request)

    async def _addresses(self, host: str, port: int) -> list[str]:
        return await vetted_addresses(host, port, allow_local=self.allow_local)


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

"""The SSRF guard at connect time (adapters/webhook_http.py): real sockets to a tiny webhook server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ipaddress
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sms_gateway import consumers
from sms_gateway.adapters import http, http_streams, webhook_http
from sms_gateway.adapters.http_streams import open_stream
from sms_gateway.adapters.webhook_http import GuardedTransport, UnsafeWebhookTarget, new_webhook_client, webhook_client
from sms_gateway.domain.models import Account
from sms_gateway.logic.notify import WebhookFailed, deliver
from sms_gateway.settings import get_settings
from tests.fakes import FakeSecretBox, InMemoryStore

HOOK_NAME = "hooks.example"


class WebhookServer:
    """The client's webhook: /hook answers 200 JSON, /redirect answers 302 to /hook. Records what reached it."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        self.server_names: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(
                    {"path": self.path, "host": self.headers.get("Host", ""), "cookie": self.headers.get("Cookie", "")}
                )
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{outer.port}/hook")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/moved":
                    # A relative Location with a token in its query, as a framework's trailing-slash redirect keeps it
                    self.send_response(301)
                    self.send_header("Location", "/moved/?token=s3cret#top")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Set-Cookie", "session=abc; Path=/")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: outer.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [request["path"] for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    running = WebhookServer()
    yield running
    running.close()


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A DNS of our own: the guard resolves through `webhook_http.resolve`, and this answers for the names set here."""
    table: dict[str, list[str]] = {}
    real = webhook_http.resolve

    async def resolve(host: str, port: int) -> list[str]:
        return table[host] if host in table else await real(host, port)

    monkeypatch.setattr(webhook_http, "resolve", resolve)
    return table


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Sets the one setting the guard reads (the local stack's allow_http_webhooks) for the notifier's own client."""

    def allow_local(value: bool) -> None:
        monkeypatch.setenv("ALLOW_HTTP_WEBHOOKS", "true" if value else "false")
        get_settings.cache_clear()

    yield allow_local
    webhook_http.close()
    get_settings.cache_clear()


def post(client: httpx.AsyncClient, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        return await client.post(url, content=b"{}", headers={"Content-Type": "application/json"})

    return http.run(go())


def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(server: WebhookServer, names) -> None:
    # Given a public-looking name that resolves to 127.0.0.1 (set-time checks cannot see that)
    names[HOOK_NAME] = ["127.0.0.1"]
    client = new_webhook_client(allow_local=False)
    # When the notifier's client posts to it
    with pytest.raises(UnsafeWebhookTarget, match=re.escape("webhook URL resolves to a forbidden address 127.0.0.1")):
        post(client, f"https://{HOOK_NAME}:{server.port}/hook")
    # Then nothing reached the server.
    assert server.requests == []
    http.run(client.aclose())


@pytest.mark.parametrize("host", ["localhost", "2130706433", "127.1", "[::ffff:127.0.0.1]"])
def test_the_real_resolver_finds_loopback_behind_names_and_numeric_forms(server: WebhookServer, host: str) -> None:
    client = new_webhook_client(allow_local=False)
    with pytest.raises(UnsafeWebhookTarget, match="forbidden address"):
        post(client, f"https://{host}:{server.port}/hook")
    assert server.requests == []
    http.run(client.aclose())


def test_the_local_stack_reaches_a_loopback_webhook_by_name(server: WebhookServer, names) -> None:
    # Given the local stack, whose tests run their webhook servers on 127.0.0.1
    names[HOOK_NAME] = ["127.0.0.1"]
    client = new_webhook_client(allow_local=True)
    # When it posts over http to a name for 127.0.0.1
    response = post(client, f"http://{HOOK_NAME}:{server.port}/hook")
    # Then the server got it, addressed to the name
    assert response.status_code == 200
    assert [(r["path"], r["host"]) for r in server.requests] == [("/hook", f"{HOOK_NAME}:{server.port}")]
    http.run(client.aclose())


def test_a_redirect_is_not_followed(server: WebhookServer) -> None:
    client = new_webhook_client(allow_local=True)
    response = post(client, f"http://127.0.0.1:{server.port}/redirect")
    assert response.status_code == 302
    assert server.paths() == ["/redirect"]
    http.run(client.aclose())


def test_plain_http_is_refused_off_the_local_stack(names) -> None:
    names[HOOK_NAME] = ["93.184.216.34"]
    client = new_webhook_client(allow_local=False)
    with pytest.raises(UnsafeWebhookTarget, match="must be https"):
        post(client, f"http://{HOOK_NAME}/hook")
    http.run(client.aclose())


class RecordingNetwork:
    """Stands in for the network under GuardedTransport: records what it is asked to dial, dials nothing."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int, str]] = []

    async def __call__(self, address: str, port: int, *, tls: ssl.SSLContext | None, server_hostname: str) -> Any:
        self.dialled.append((address, port, server_hostname))
        if address == "2001:db8:dead::1":
            raise OSError("unreachable")
        return "reader", "writer"


def run(coroutine: Awaitable[Any]) -> Any:
    async def go() -> Any:
        return await coroutine

    return http.run(go())


def test_the_vetted_address_is_dialled_not_the_name(names) -> None:
    # Given a name with an unreachable IPv6 answer and a reachable IPv4 one, both public
    names[HOOK_NAME] = ["2001:db8:dead::1", "93.184.216.34"]
    names["2001:db8:dead::1"] = ["2001:db8:dead::1"]  # documentation prefix: only reached through our fake network
    network = RecordingNetwork()
    transport = GuardedTransport(allow_local=True, connect=network)
    # When the guard connects
    assert run(transport._dial(HOOK_NAME, 443, None)) == ("reader", "writer")
    # Then it dialled the addresses it resolved, in order, never the name (nothing left to re-resolve), each
    # under the URL's host name (what TLS asks for and checks)
    assert network.dialled == [("2001:db8:dead::1", 443, HOOK_NAME), ("93.184.216.34", 443, HOOK_NAME)]


def test_a_name_whose_every_address_is_unreachable_is_a_connect_error(names) -> None:
    names[HOOK_NAME] = ["2001:db8:dead::1"]
    network = RecordingNetwork()
    client = httpx.AsyncClient(transport=GuardedTransport(allow_local=True, connect=network))
    with pytest.raises(httpx.ConnectError, match="unreachable"):
        post(client, f"https://{HOOK_NAME}/hook")
    assert network.dialled == [("2001:db8:dead::1", 443, HOOK_NAME)]


@pytest.mark.parametrize(
    "answers",
    [["10.0.0.5"], ["93.184.216.34", "127.0.0.1"], ["2606:4700::1111", "fd00:ec2::254"], ["::ffff:169.254.169.254"]],
)
def test_any_forbidden_answer_refuses_the_name(names, answers: list[str]) -> None:
    names[HOOK_NAME] = answers
    network = RecordingNetwork()
    with pytest.raises(UnsafeWebhookTarget, match="forbidden address") as refused:
        run(GuardedTransport(allow_local=False, connect=network)._dial(HOOK_NAME, 443, None))
    assert refused.value.host == HOOK_NAME
    assert ipaddress.ip_address(refused.value.address) in {ipaddress.ip_address(a) for a in answers}
    assert network.dialled == []


def test_a_name_that_does_not_resolve_is_an_ordinary_connect_error() -> None:
    client = new_webhook_client(allow_local=False)
    with pytest.raises(httpx.ConnectError, match="cannot resolve"):
        post(client, "https://no-such-host.invalid/hook")
    http.run(client.aclose())


def notification(url: str) -> dict[str, Any]:
    return {"kind": "dlr", "id": "dlr_1_1", "account_id": "a1", "url": url, "payload": {"type": "delivery report"}}


@pytest.fixture
def accounts() -> InMemoryStore:
    store = InMemoryStore()
    store.accounts["a1"] = Account(
        account_id="a1",
        name="Acme",
        credits=0,
        default_country="NG",
        timezone="Africa/Lagos",
        senders=("ACME",),
        partner_id="100000",
        webhook_token="tok",
        created_at=dt.datetime(2025, 3, 1, tzinfo=dt.UTC).isoformat(),
    )
    return store


def test_the_notifier_reports_a_forbidden_address_as_a_failed_delivery(stack, names, accounts) -> None:
    # Given the deployed gateway and a batch callback URL whose name now points inside the VPC
    stack(False)
    names[HOOK_NAME] = ["10.0.0.5"]
    # When the notifier delivers a DLR there
    with pytest.raises(WebhookFailed) as failed:
        http.run(deliver(notification(f"https://{HOOK_NAME}/dlr"), accounts, consumers.post_webhook, FakeSecretBox()))
    # Then it is a failed delivery that says why
    assert str(failed.value) == "webhook URL resolves to a forbidden address 10.0.0.5"


def test_the_notifier_does_not_follow_a_redirect(stack, server: WebhookServer, accounts) -> None:
    # Given the local stack and a client webhook that answers 302 to another URL
    stack(True)
    # When the notifier delivers there
    with pytest.raises(WebhookFailed, match="answered 302"):
        http.run(
            deliver(
                notification(f"http://127.0.0.1:{server.port}/redirect"),
                accounts,
                consumers.post_webhook,
                FakeSecretBox(),
            )
        )
    # Then the redirect's target was never asked
    assert server.paths() == ["/redirect"]


def test_a_redirect_failure_names_its_location_resolved_and_without_credentials(stack, server, accounts) -> None:
    # Given the local stack and a client webhook that answers 301 to a relative URL with a token in its query
    stack(True)
    # When the notifier delivers there
    with pytest.raises(WebhookFailed) as failed:
        http.run(
            deliver(
                notification(f"http://127.0.0.1:{server.port}/moved"),
                accounts,
                consumers.post_webhook,
                FakeSecretBox(),
            )
        )
    # Then the failure says where it pointed, as a whole URL the client can set, without the query's token
    reason = str(failed.value)
    assert reason.startswith("client webhook answered 301")
    assert f"http://127.0.0.1:{server.port}/moved/" in reason
    assert "s3cret" not in reason and "#top" not in reason
    assert failed.value.status_code == 301
    # And the target was not asked
    assert server.paths() == ["/moved"]


def test_the_notifier_delivers_to_an_allowed_webhook(stack, server: WebhookServer, accounts) -> None:
    stack(True)
    assert http.run(
        deliver(notification(f"http://127.0.0.1:{server.port}/hook"), accounts, consumers.post_webhook, FakeSecretBox())
    )
    assert server.paths() == ["/hook"]


def test_the_webhook_client_keeps_no_cookies_between_posts(stack, server: WebhookServer, accounts) -> None:
    # Given a client webhook that sets a cookie on every answer
    stack(True)
    hook = notification(f"http://127.0.0.1:{server.port}/hook")
    # When the notifier posts to it twice (one thread's client, as a notifier worker's)
    for _ in range(2):
        assert http.run(deliver(hook, accounts, consumers.post_webhook, FakeSecretBox()))
    # Then neither post carried it: one account's webhook cannot make the notifier stateful
    assert [request["cookie"] for request in server.requests] == ["", ""]


def test_the_webhook_client_is_its_own_guarded_client(stack) -> None:
    stack(False)
    client = webhook_client()
    assert client is webhook_client()  # pooled per thread
    assert client is not http.async_client()  # never the upstreams' client
    assert client.follow_redirects is False
    assert (client.timeout.connect, client.timeout.read) == (3.0, 10.0)
    stack(True)
    assert webhook_client() is not client  # a client is not reused across a change of the setting


# TLS: the socket goes to the vetted IP, while SNI and the certificate check use the URL's name.


def _certificates(tmp_path: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for hooks.example only (not for 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOOK_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOOK_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_file, key_file)
    client_side = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server_side, client_side


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[tuple[WebhookServer, ssl.SSLContext]]:
    server_side, client_side = _certificates(tmp_path)
    running = WebhookServer(tls=server_side)
    yield running, client_side
    running.close()


def test_tls_names_the_host_while_the_socket_goes_to_the_vetted_address(tls_server, names) -> None:
    # Given an https webhook whose certificate is for hooks.example only, and hooks.example resolving to it
    server, trust = tls_server
    names[HOOK_NAME] = ["127.0.0.1"]
    client = new_webhook_client(allow_local=True, ssl_context=trust)
    # When the guarded client posts there (it dials 127.0.0.1 itself)
    response = post(client, f"https://{HOOK_NAME}:{server.port}/hook")
    # Then TLS asked for hooks.example (SNI) and the certificate was checked against that name
    assert response.status_code == 200
    assert server.server_names == [HOOK_NAME]
    http.run(client.aclose())


def test_tls_still_refuses_a_certificate_for_another_name(tls_server, names) -> None:
    server, trust = tls_server
    names["other.example"] = ["127.0.0.1"]
    client = new_webhook_client(allow_local=True, ssl_context=trust)
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        post(client, f"https://other.example:{server.port}/hook")
    assert server.requests == []
    http.run(client.aclose())


def test_the_notifier_tells_an_unreachable_webhook_from_one_that_answered_or_was_refused(stack, server, names) -> None:
    # Given the local stack, a port nothing listens on, and a name pointing inside the VPC (the deployed guard)
    stack(True)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()

    def failure(url: str) -> WebhookFailed:
        with pytest.raises(WebhookFailed) as failed:
            http.run(consumers.post_webhook(url, {}, b"{}"))
        return failed.value

    # Then a refused connection is unreachable, its host down (what the notifier's circuit breaker counts) ...
    refused = failure(f"http://127.0.0.1:{port}/hook")
    assert refused.unreachable is True and refused.host_down is True

    # ... as is a connect that times out
    async def never_connects(*_args: Any, **_kwargs: Any) -> Any:
        raise httpx.ConnectTimeout("connecting timed out")

    transport = webhook_client()._transport
    assert isinstance(transport, GuardedTransport)
    real_connect, transport._connect = transport._connect, never_connects
    timed_out = failure(f"http://127.0.0.1:{server.port}/hook")
    assert timed_out.unreachable is True and timed_out.host_down is True
    transport._connect = real_connect
    # ... and an address the guard refuses is not: the host was never asked
    stack(False)
    names[HOOK_NAME] = ["10.0.0.5"]
    assert failure(f"https://{HOOK_NAME}/dlr").unreachable is False


def test_an_international_host_is_dialled_as_the_idna_2008_name_the_url_was_accepted_as(monkeypatch) -> None:
    from sms_gateway.domain.webhook_urls import require_safe_webhook_url

    # Given a client's DLR URL on faß.de, accepted when set as xn--fa-hia.de (IDNA 2008, docs/webhooks.md), a name of
    # its own: fass.de (what IDNA 2003 maps it to) is another registrant's domain
    url = "https://faß.de/dlr"
    assert require_safe_webhook_url(url, allow_local=False) == url
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    monkeypatch.setattr(webhook_http, "resolve", resolve)
    dialled: list[str] = []

    async def connect(address: str, port: int, *, tls: ssl.SSLContext | None, server_hostname: str) -> Any:
        dialled.append(server_hostname)
        raise OSError("not dialling out from a test")

    client = httpx.AsyncClient(transport=GuardedTransport(allow_local=False, connect=connect))
    # When the notifier's transport posts to it
    with pytest.raises(httpx.ConnectError):
        post(client, url)
    # Then it looked up, and named to TLS (SNI and the certificate check), the name the URL was accepted as. Before, it
    # handed "faß.de" to getaddrinfo and to ssl, which both encode it with Python's IDNA 2003 codec: "fass.de", so the
    # signed report and (to the account's own URL) the webhook token went to fass.de's server, certificate and all.
    assert "faß.de".encode("idna") == b"fass.de"
    assert asked == ["xn--fa-hia.de"]
    assert dialled == ["xn--fa-hia.de"]


def test_a_name_whose_first_address_is_blackholed_is_reached_on_its_next_one(stack, server, names, accounts) -> None:
    # Given the local stack and a webhook name with two addresses, as a load balancer in two zones has: the first
    # swallows connection attempts (a dead node: no answer, no refusal), the second is the client's live server
    stack(True)
    blackholed = "192.0.2.10"
    names[HOOK_NAME] = [blackholed, "127.0.0.1"]
    dialled: list[str] = []

    async def network(address: str, port: int, *, tls: ssl.SSLContext | None, server_hostname: str) -> Any:
        dialled.append(address)
        if address == blackholed:
            await asyncio.Event().wait()  # a SYN nobody answers: only the connect timeout ends it
        return await open_stream(address, port, tls=tls, server_hostname=server_hostname)

    transport = webhook_client()._transport
    assert isinstance(transport, GuardedTransport)
    transport._connect = network
    # When the notifier posts a report to it
    delivered = http.run(
        deliver(
            notification(f"http://{HOOK_NAME}:{server.port}/hook"), accounts, consumers.post_webhook, FakeSecretBox()
        )
    )
    # Then it reached the live address within the connect timeout, as a browser would: the report is delivered,
    # not failed "unreachable" (and counted against the origin by the circuit breaker) while half the host is up
    assert delivered == f"http://{HOOK_NAME}:{server.port}/hook"
    assert server.paths() == ["/hook"]
    assert dialled == [blackholed, "127.0.0.1"]


class FakeWriter:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_of_two_addresses_that_connect_together_one_is_used_and_the_other_closed() -> None:
    # Given a name's two addresses, the first slower than the attempt delay, both connecting in the same instant
    writers = [FakeWriter(), FakeWriter()]
    both_started = asyncio.Event()

    async def dial(index: int) -> Any:
        if index == 1:
            both_started.set()
        await both_started.wait()
        return "reader", writers[index]

    # When the guard dials them
    _reader, writer = run(http_streams.first_connection([functools.partial(dial, 0), functools.partial(dial, 1)]))
    # Then one connection is used and the other is not left open (a socket per post would leak)
    assert writer in writers
    assert [w.closed for w in writers if w is not writer] == [True]
    assert writer.closed is False

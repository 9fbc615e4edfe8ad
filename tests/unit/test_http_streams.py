"""The HTTP clients' transport (adapters/http_streams.py) against a scripted HTTP server: on 127.0.0.1, or at the far
end of a socketpair handed to the transport in place of the network (no listening port)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sms_gateway import consumers
from sms_gateway.adapters import http, webhook_http
from sms_gateway.adapters.http_streams import MAX_BODY_BYTES, MAX_HEAD_BYTES, StreamTransport
from sms_gateway.logic.notify import WebhookFailed, WebhookResponse

Answer = Callable[[int, bytes], Awaitable[bytes | None]]
REPO = Path(__file__).resolve().parents[2]


def ok(body: dict, *extra_headers: str) -> bytes:
    payload = json.dumps(body).encode()
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(payload)}", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Server:
    """Reads each request (head and Content-Length body) and writes what `answer(index, request)` returns; None
    closes the connection without an answer. Counts connections and requests in progress."""

    def __init__(
        self,
        answer: Answer,
        *,
        close_after: Callable[[int], bool] = lambda index: False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        self.tls = tls
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.answer(len(self.requests) - 1, request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after(len(self.requests) - 1):
                    return
        finally:
            self.open -= 1
            writer.close()


def client(connections: int = 4, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=StreamTransport(connections), timeout=httpx.Timeout(5.0, **timeouts))


def test_a_post_goes_out_whole_and_keep_alive_connections_are_reused():
    async def scenario() -> tuple[Server, list[httpx.Response]]:
        async def answer(index: int, request: bytes) -> bytes:
            return ok({"message_id": f"m{index}"})

        server = Server(answer)
        async with server as url, client() as http:
            answers = [await http.post(f"{url}/sms/send?x=1", json={"to": "234", "text": "hi"}) for _ in range(3)]
        return server, answers

    server, answers = asyncio.run(scenario())
    # Then each answer reads as httpx's would, and the three requests shared one connection
    assert [answer.json() for answer in answers] == [{"message_id": f"m{index}"} for index in range(3)]
    assert answers[0].status_code == 200 and answers[0].headers["content-type"] == "application/json"
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /sms/send?x=1 HTTP/1.1\r\n")
    assert json.loads(body) == {"to": "234", "text": "hi"}
    assert f"content-length: {len(body)}".encode() in head.lower()
    assert b"\r\nhost: 127.0.0.1:" in head.lower()


def test_chunked_answers_and_answers_read_to_the_close_are_whole_and_close_means_a_new_connection():
    async def scenario() -> tuple[Server, list[bytes]]:
        async def answer(index: int, request: bytes) -> bytes | None:
            if index == 0:
                return (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
                )
            if index == 1:
                return ok({"n": 1}, "Connection: close")
            return b"HTTP/1.0 202 Accepted\r\n\r\nuntil the end"

        server = Server(answer, close_after=lambda index: index >= 1)
        async with server as url, client() as http:
            bodies = [(await http.get(f"{url}/{index}")).content for index in range(3)]
        return server, bodies

    server, bodies = asyncio.run(scenario())
    assert bodies[0] == b"hello world"
    assert json.loads(bodies[1]) == {"n": 1}
    assert bodies[2] == b"until the end"
    # The answer with Connection: close made the third request open a connection of its own
    assert server.connections == 2


def test_an_idle_connection_the_server_closed_is_not_reused():
    async def scenario() -> tuple[Server, int]:
        async def answer(index: int, request: bytes) -> bytes | None:
            return ok({"index": index})

        # A server that drops each connection once it has answered (as servers do after their keep-alive timeout),
        # without saying so in the answer
        server = Server(answer, close_after=lambda index: True)
        async with server as url, client() as http:
            await http.get(f"{url}/first")
            await asyncio.sleep(0.05)
            second = await http.get(f"{url}/second")
        return server, second.json()["index"]

    server, index = asyncio.run(scenario())
    # Then the second request went on a fresh connection and was answered, rather than failing on the dead one
    assert index == 1
    assert server.connections == 2


def test_never_more_connections_to_an_origin_than_the_limit():
    async def scenario() -> Server:
        async def answer(index: int, request: bytes) -> bytes:
            await asyncio.sleep(0.01)
            return ok({"index": index})

        server = Server(answer)
        async with server as url, client(connections=3) as http:
            answers = await asyncio.gather(*(http.post(f"{url}/sms/send", json={"n": n}) for n in range(12)))
        assert all(answer.status_code == 200 for answer in answers)
        return server

    server = asyncio.run(scenario())
    assert server.most_open == 3
    assert len(server.requests) == 12


def test_failures_are_httpx_errors_the_providers_already_handle():
    async def scenario() -> list[type[Exception]]:
        async def answer(index: int, request: bytes) -> bytes | None:
            if index == 0:
                await asyncio.sleep(1)
                return ok({})
            if index == 1:
                return None  # the connection drops before any answer
            if index == 2:
                return b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ncut short"
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)

        raised: list[type[Exception]] = []
        server = Server(answer, close_after=lambda index: index == 2)
        async with server as url, client(read=0.2) as http:
            for _ in range(4):
                try:
                    await http.post(f"{url}/sms/send", json={})
                except httpx.TransportError as error:
                    raised.append(type(error))
        # A port nobody listens on
        async with client() as http:
            try:
                await http.post(f"{url.rsplit(':', 1)[0]}:9/sms/send", json={})
            except httpx.TransportError as error:
                raised.append(type(error))
        return raised

    raised = asyncio.run(scenario())
    assert raised == [
        httpx.ReadTimeout,
        httpx.RemoteProtocolError,
        httpx.RemoteProtocolError,
        httpx.RemoteProtocolError,
        httpx.ConnectError,
    ]


def test_a_scheme_other_than_http_is_refused():
    async def scenario() -> None:
        async with client() as http:
            await http.get("ftp://127.0.0.1/file")

    with pytest.raises(httpx.UnsupportedProtocol):
        asyncio.run(scenario())


def test_a_compressed_answer_reads_decompressed():
    import gzip

    async def scenario() -> httpx.Response:
        payload = gzip.compress(json.dumps({"sid": "SM1"}).encode())

        async def answer(index: int, request: bytes) -> bytes:
            head = f"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: {len(payload)}\r\n\r\n"
            return head.encode() + payload

        async with Server(answer) as url, client() as http:
            return await http.post(f"{url}/Messages.json", data={"To": "+234"})

    response = asyncio.run(scenario())
    assert response.status_code == 201
    assert response.json() == {"sid": "SM1"}


def test_the_upstream_client_sends_no_cookie_an_upstream_set():
    from sms_gateway.adapters.http import CookielessClient

    async def scenario() -> Server:
        async def answer(index: int, request: bytes) -> bytes:
            return ok({"index": index}, "Set-Cookie: session=abc; Path=/")

        server = Server(answer)
        async with server as url, CookielessClient(transport=StreamTransport(2)) as http:
            for _ in range(2):
                await http.post(f"{url}/sms/send", json={})
            assert not http.cookies
        return server

    server = asyncio.run(scenario())
    # Then the second request carried no Cookie header back
    assert all(b"\r\ncookie:" not in request.lower() for request in server.requests)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_upstreams_are_verified(tmp_path: Path):
    # Given an HTTPS upstream whose certificate a private authority issued
    cert_path, key_path = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)

    async def scenario() -> tuple[dict, type[Exception] | None]:
        async def answer(index: int, request: bytes) -> bytes:
            return ok({"index": index})

        async with Server(answer, tls=server_tls) as url:
            # When a client trusting that authority submits, and one with the default (public) roots
            trusting = httpx.AsyncClient(
                transport=StreamTransport(2, ssl_context=ssl.create_default_context(cafile=cert_path))
            )
            async with trusting:
                answered = (await trusting.post(f"{url}/sms/send", json={})).json()
            refused = None
            async with client() as default:
                try:
                    await default.post(f"{url}/sms/send", json={})
                except httpx.TransportError as error:
                    refused = type(error)
        return answered, refused

    answered, refused = asyncio.run(scenario())
    # Then the first is answered over TLS, and the second refuses the unknown certificate before sending anything
    assert answered == {"index": 0}
    assert refused is httpx.ConnectError


def test_an_operators_private_authority_named_by_ssl_cert_file_is_trusted_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Given an HTTPS upstream whose certificate a private authority issued, and SSL_CERT_FILE naming that authority
    # (as httpx's own transport honours it)
    from sms_gateway.adapters.http_streams import default_ssl_context

    cert_path, key_path = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    default_ssl_context.cache_clear()

    async def scenario() -> dict:
        async def answer(index: int, request: bytes) -> bytes:
            return ok({"index": index})

        async with Server(answer, tls=server_tls) as url, client() as default:
            return dict((await default.post(f"{url}/sms/send", json={})).json())

    try:
        # When a transport with the default context submits
        answered = asyncio.run(scenario())
    finally:
        default_ssl_context.cache_clear()
    # Then TLS is verified against that authority and the answer comes back
    assert answered == {"index": 0}


def test_a_request_waiting_longer_than_the_pool_timeout_for_a_connection_gives_up():
    async def scenario() -> tuple[list[object], Server]:
        async def answer(index: int, request: bytes) -> bytes:
            await asyncio.sleep(0.5)
            return ok({"index": index})

        server = Server(answer)
        async with server as url, client(connections=1, pool=0.1) as http:
            answers = await asyncio.gather(
                http.post(f"{url}/sms/send", json={}), http.post(f"{url}/sms/send", json={}), return_exceptions=True
            )
        return answers, server

    answers, server = asyncio.run(scenario())
    # Then the first was answered on the one connection; the second never went out
    assert isinstance(answers[0], httpx.Response) and answers[0].json() == {"index": 0}
    assert isinstance(answers[1], httpx.PoolTimeout)
    assert len(server.requests) == 1


def test_neither_http_client_loads_httpcore_anyio_or_h11() -> None:
    # Given a fresh interpreter (importing httpcore, anyio and h11 takes about 100 ms of a cold start)
    script = (
        "import sys\n"
        "from sms_gateway.adapters import http, webhook_http\n"
        "from sms_gateway.adapters.http_streams import default_ssl_context\n"
        "clients = [http.async_client(), webhook_http.webhook_client()]\n"
        "default_ssl_context()\n"
        "print(sorted({m.partition('.')[0] for m in sys.modules} & {'httpcore', 'anyio', 'h11'}))\n"
    )
    # When the upstream client and the notifier's webhook client are built (with their TLS context)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    # Then none of httpx's own transport's packages was imported
    assert run.stdout.split() == ["[]"]


# ---------------------------------------------------------------- a server at the far end of a socketpair


def _read_request(sock: socket.socket, buffered: bytes) -> tuple[bytes | None, bytes]:
    """One whole request (head and Content-Length body) from `sock`; None when the peer closed or went idle."""
    data = buffered
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None, b""
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class PairedServer:
    """Stands in for the network (a transport's dialling): every dial gets a fresh socketpair whose far end, on a
    thread, answers each request with `answer(request)` and keeps the connection alive like an HTTP/1.1 server,
    closing it after `idle_timeout` seconds without a request (a server's keep-alive timeout)."""

    def __init__(self, answer: Callable[[bytes], bytes], *, idle_timeout: float = 30.0) -> None:
        self.answer = answer
        self.idle_timeout = idle_timeout
        self.requests: list[bytes] = []
        self.dials = 0
        self._threads: list[threading.Thread] = []
        self._ends: list[socket.socket] = []

    async def __call__(
        self, address: str, port: int, *, tls: object, server_hostname: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.dials += 1
        ours, theirs = socket.socketpair()
        self._ends.append(theirs)
        thread = threading.Thread(target=self._serve, args=(theirs,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return await asyncio.open_connection(sock=ours, limit=MAX_HEAD_BYTES)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(self.idle_timeout)
        buffered = b""
        try:
            while True:
                request, buffered = _read_request(sock, buffered)
                if request is None:
                    return
                self.requests.append(request)
                sock.sendall(self.answer(request))
        finally:
            sock.close()

    def close(self) -> None:
        for end in self._ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)


class PairedTransport(StreamTransport):
    """The upstream client's transport, dialling a PairedServer instead of the network."""

    def __init__(self, server: PairedServer) -> None:
        super().__init__(4)
        self.server = server

    async def _dial(
        self, host: str, port: int, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.server(host, port, tls=tls, server_hostname=host)


def http_answer(status: int, body: bytes, *extra: tuple[str, str]) -> bytes:
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def header_of(request: bytes, name: bytes) -> bytes | None:
    for line in request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@pytest.fixture
def paired(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., PairedServer]]:
    """`paired(answer)`: a PairedServer as the network of the notifier's real webhook client (new_webhook_client),
    which consumers.post_webhook then posts through as it does in the notifier."""
    made: list[tuple[PairedServer, httpx.AsyncClient]] = []

    def install(answer: Callable[[bytes], bytes], *, idle_timeout: float = 30.0) -> PairedServer:
        server = PairedServer(answer, idle_timeout=idle_timeout)
        client = webhook_http.new_webhook_client(allow_local=True)
        transport = client._transport
        assert isinstance(transport, webhook_http.GuardedTransport)
        transport._connect = server
        monkeypatch.setattr(webhook_http, "webhook_client", lambda: client)
        made.append((server, client))
        return server

    yield install
    for server, client in made:
        http.run(client.aclose())
        server.close()


def post_notification() -> WebhookResponse:
    body = json.dumps({"type": "delivery report", "sequence": 3}).encode()
    return http.run(consumers.post_webhook("http://127.0.0.1/dlr", {"Content-Type": "application/json"}, body))


def upstream_post(answer: bytes) -> tuple[httpx.Response | type[Exception], PairedServer]:
    """One POST through the upstream client's transport and headers (adapters/http.async_client) to a server
    answering `answer`: the answer, or the type of the transport error it raised."""
    server = PairedServer(lambda _request: answer)
    upstream = http.async_client()

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=PairedTransport(server), headers=upstream.headers) as client:
            return await client.post("http://upstream.example/sms/send", json={})

    try:
        return asyncio.run(scenario()), server
    except httpx.TransportError as error:
        return type(error), server
    finally:
        server.close()


# ---------------------------------------------------------------- compressed answers


def test_a_client_webhook_answer_that_inflates_past_one_mib_is_a_failed_delivery(paired) -> None:
    # Given a client webhook (hostile, or a misconfigured proxy) that answers 2xx with 8 MiB of JSON gzipped
    # twice: under a kilobyte on the wire, which httpx would have inflated whole (a triple gzip of a few KiB
    # becomes gigabytes and kills the 512 MB notifier, with the other accounts' notifications of its batch)
    wire = gzip.compress(gzip.compress(b"{}" + b" " * (8 << 20), 9), 9)
    assert len(wire) < 1024
    server = paired(lambda _request: http_answer(200, wire, ("Content-Encoding", "gzip, gzip")))
    # When the notifier posts a notification to it
    # Then it is a failed delivery, retried on the schedule, with nothing inflated past MAX_BODY_BYTES
    with pytest.raises(WebhookFailed, match="encoded 2 times over"):
        post_notification()
    # And the notifier asked for an answer without compression in the first place
    assert header_of(server.requests[0], b"accept-encoding") == b"identity"


@pytest.mark.parametrize(
    "coding, compress",
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_a_compressed_answer_is_decoded_up_to_one_mib_and_refused_past_it(coding: str, compress: Callable) -> None:
    # Given an upstream that compresses its answers, a small one and one that inflates just past the limit
    small = json.dumps({"sid": "SM1"}).encode()
    large = b'"' + b"x" * (MAX_BODY_BYTES - 1) + b'"'
    # When the upstream client posts to it
    answered, server = upstream_post(http_answer(200, compress(small), ("Content-Encoding", coding)))
    refused, _ = upstream_post(http_answer(200, compress(large), ("Content-Encoding", coding)))
    # Then the small one reads decoded, and httpx does not decode it a second time
    assert isinstance(answered, httpx.Response)
    assert answered.json() == {"sid": "SM1"} and "content-encoding" not in answered.headers
    assert answered.headers["content-length"] == str(len(small))
    # And the client asked for only what the transport decodes
    assert header_of(server.requests[0], b"accept-encoding") == b"gzip, deflate"
    # And the one past MAX_BODY_BYTES once decoded is refused, as a larger answer on the wire is
    assert refused is httpx.RemoteProtocolError


def test_a_raw_deflate_answer_reads_and_other_codings_or_layers_are_refused() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = raw.compress(b'{"ok":true}') + raw.flush()
    # Given answers in raw deflate (some servers send it so), and in codings the transport does not read
    answered, _ = upstream_post(http_answer(200, raw_deflate, ("Content-Encoding", "deflate")))
    identity, _ = upstream_post(http_answer(200, b'{"ok":true}', ("Content-Encoding", "identity")))
    brotli, _ = upstream_post(http_answer(200, b"\x0b\x02\x80{}\x03", ("Content-Encoding", "br")))
    twice, _ = upstream_post(
        http_answer(
            200, gzip.compress(gzip.compress(b"{}")), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")
        )
    )
    corrupt, _ = upstream_post(http_answer(200, b"not gzip at all", ("Content-Encoding", "gzip")))
    # Then raw deflate and identity read, and the others are transport errors the providers already handle
    assert isinstance(answered, httpx.Response) and answered.json() == {"ok": True}
    assert isinstance(identity, httpx.Response) and identity.json() == {"ok": True}
    assert [brotli, twice, corrupt] == [httpx.RemoteProtocolError] * 3


# ---------------------------------------------------------------- idle connections the server closed


def test_a_keepalive_connection_a_client_webhook_closed_while_the_notifier_was_idle_is_not_reused(paired) -> None:
    # Given a client webhook server that closes an idle keep-alive connection after 0.3 s (gunicorn's default
    # keep-alive is 2 s, under the transport's KEEPALIVE_EXPIRY_SECONDS of 4 s)
    server = paired(lambda _request: http_answer(200, b'{"ok":true}'), idle_timeout=0.3)
    assert post_notification().status_code == 200
    # When the next notification for it comes 1 s later, the worker's event loop not running in between (as
    # between two notifier invocations, so nothing has read the server's FIN)
    time.sleep(1.0)
    # Then it goes on a new connection and is delivered, not written to the closed one and failed ("malformed or
    # cut answer": a failure record, WebhooksRetried, the notification 5 s late)
    assert post_notification().status_code == 200
    assert server.dials == 2


def test_an_upstream_connection_closed_while_the_dispatcher_was_idle_is_not_reused_nor_a_submit_retried() -> None:
    # Given an upstream that closes idle connections after 0.3 s
    server = PairedServer(lambda _request: http_answer(200, b'{"ok":true}'), idle_timeout=0.3)

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(transport=PairedTransport(server)) as client:
            first = await client.post("http://upstream.example/sms/send", json={})
            # When the next submit comes 1 s later, the loop blocked in between (between two invocations)
            time.sleep(1.0)
            second = await client.post("http://upstream.example/sms/send", json={})
            return [first.status_code, second.status_code]

    try:
        statuses = asyncio.run(scenario())
    finally:
        server.close()
    # Then it goes on a fresh connection (not written to the dead one and recorded submit_unconfirmed), and each
    # submit was sent exactly once
    assert statuses == [200, 200]
    assert server.dials == 2 and len(server.requests) == 2


def test_a_client_webhook_answer_nested_too_deep_to_read_is_a_failed_delivery(paired) -> None:
    from sms_gateway.domain.models import Account
    from sms_gateway.logic.notify import deliver
    from tests.fakes import FakeSecretBox

    # Given a client webhook answering 200 with JSON nested deeper than the interpreter's recursion limit
    paired(lambda _request: http_answer(200, b"[" * 100_000))
    account = Account(account_id="acct-1", name="Deep", credits=0, dlr_url="http://127.0.0.1/dlr")

    class OneAccount:
        def get_account(self, account_id: str) -> Account | None:
            return account if account_id == "acct-1" else None

    notification = {"kind": "dlr", "id": "dlr_1_3", "account_id": "acct-1", "url": None, "payload": {"sequence": 3}}
    # When the notifier delivers to it through its real client
    # Then it is a failed delivery (recorded, retried on the schedule), not a RecursionError out of deliver()
    with pytest.raises(WebhookFailed, match="2xx without valid JSON"):
        http.run(deliver(notification, OneAccount(), consumers.post_webhook, FakeSecretBox()))


# ---------------------------------------------------------------- a name with several addresses


def test_an_upstream_name_whose_first_address_is_blackholed_is_reached_on_its_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an upstream name with two addresses, as a load balancer in two zones has: the first swallows connection
    # attempts (a dead node: no answer, no refusal), the second is the upstream's live server. The names and the
    # connects are answered at the event loop's edge (getaddrinfo, sock_connect): nothing leaves 127.0.0.1
    blackholed = "192.0.2.10"
    loop = http._loop()
    real_getaddrinfo, real_sock_connect = loop.getaddrinfo, loop.sock_connect
    dialled: list[str] = []

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        if host == "upstream.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))
                for address in (blackholed, "127.0.0.1")
            ]
        return await real_getaddrinfo(host, port, *args, **kwargs)

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        dialled.append(address[0])
        if address[0] == blackholed:
            await asyncio.Event().wait()  # a SYN nobody answers: only the connect timeout ends it
        await real_sock_connect(sock, address)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(loop, "sock_connect", sock_connect)

    async def scenario() -> httpx.Response:
        async def answer(index: int, request: bytes) -> bytes:
            return ok({"message_id": "m1"})

        async with Server(answer) as url:
            port = url.rsplit(":", 1)[1]
            # When the dispatcher's upstream client submits to it
            return await http.async_client().post(f"http://upstream.example:{port}/sms/send", json={})

    try:
        response = http.run(scenario())
    finally:
        http.close()
    # Then it reached the live address within the connect timeout: the submit is answered, not failed "timed out"
    # (the upstream taken for down, its messages offered to the fallback or retried) while half the host is up
    assert response.json() == {"message_id": "m1"}
    assert dialled == [blackholed, "127.0.0.1"]

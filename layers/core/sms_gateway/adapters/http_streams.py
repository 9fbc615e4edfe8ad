"""A lean HTTP/1.1 transport for httpx on asyncio streams: keep-alive connections per origin, whole bodies.

httpx's own transport (httpcore on anyio, h11) spent about 0.7 ms of CPU per upstream submit, most of the
dispatcher's CPU per message, and about 1.6 ms per client webhook post; upstream and webhook answers are small, so
this transport writes the request in one go, reads the whole answer (Content-Length, chunked, or up to the close),
undoes its gzip or deflate coding, at most MAX_BODY_BYTES either way, and hands httpx a response already read. The
dispatcher's upstream client and the notifier's SSRF-guarded webhook client (adapters/webhook_http.py) both send
through it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import select
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

# Upstream answers are a few hundred bytes; an answer past this is refused rather than held in memory, on the wire
# and again once decoded (a few hundred gzipped bytes can inflate to gigabytes).
MAX_BODY_BYTES = 1 << 20
# The content codings this transport decodes (one layer at most), and zlib's window bits for each. An answer in any
# other coding, or encoded twice over, is refused: httpx would have decoded it without a limit.
_WINDOW_BITS = {b"gzip": zlib.MAX_WBITS | 16, b"deflate": zlib.MAX_WBITS}
# What a client built on this transport may ask for (its Accept-Encoding): only what it can decode.
ACCEPT_ENCODING = "gzip, deflate"
MAX_HEAD_BYTES = 64 * 1024
# An idle connection older than this is closed rather than reused: servers drop idle ones after a few seconds,
# and a request written to a connection the server is closing fails without knowing whether it was taken.
KEEPALIVE_EXPIRY_SECONDS = 4.0
_NO_BODY_STATUSES = frozenset({204, 304})
# How long a dial to one of a name's addresses goes unanswered before the next is dialled beside it (RFC 8305's
# Connection Attempt Delay): a blackholed address must not take the whole connect timeout from the live ones.
ATTEMPT_DELAY = 0.25

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Opens a connection to one address: (address, port, *, tls, server_hostname), as open_stream.
Connect = Callable[..., Awaitable[Stream]]


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def reusable(self, now: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            # Unread bytes on an idle connection: the server said something nobody asked for; unusable.
            and not getattr(self.reader, "_buffer", b"")
            and now - self.idle_since < KEEPALIVE_EXPIRY_SECONDS
            # The loop only sees a server's FIN while it runs, and between invocations (or a notifier worker's
            # records) it does not: ask the socket itself. A request written to a connection the server closed
            # fails, and no request is retried.
            and not _readable(self.writer.get_extra_info("socket"))
        )

    def close(self) -> None:
        self.writer.close()


def _readable(sock: socket.socket | None) -> bool:
    """Whether an idle connection's socket has bytes or an EOF waiting (what httpx's own pool checks before reusing
    one); poll, not select, which fails on descriptors above 1023."""
    if sock is None:
        return False
    descriptor = sock.fileno()
    if descriptor < 0:
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class _Origin:
    slots: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)


class StreamTransport(httpx.AsyncBaseTransport):
    """At most `connections` connections per origin (scheme, host, port); a request waits for one up to the
    timeout's `pool` seconds. Errors are httpx's (ConnectError, ReadTimeout, RemoteProtocolError ...), so callers
    handle them as they would httpx's own transport's. No request is ever retried: a submit the upstream may have
    taken must not go twice."""

    def __init__(
        self,
        connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
        connect: Connect | None = None,
    ) -> None:
        self._connections = connections
        self._ssl_context = ssl_context
        self._clock = clock
        self._connect = connect or open_stream
        self._origins: dict[tuple[str, str, int], _Origin] = {}

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _ssl(self) -> ssl.SSLContext:
        return self._ssl_context or default_ssl_context()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        port = url.port or (443 if url.scheme == "https" else 80)
        # The host as httpx encoded it (IDNA 2008 A-label; an IPv6 literal unbracketed): `url.host` is the Unicode
        # form, which getaddrinfo and TLS would encode by Python's IDNA 2003 codec, so `faß.de` would be looked up,
        # dialled and certificate-checked as `fass.de`, another domain (until 2026-12-07).
        origin_key = (url.scheme, url.raw_host.decode("ascii"), port)
        origin = self._origins.get(origin_key)
        if origin is None:
            origin = self._origins[origin_key] = _Origin(asyncio.Semaphore(self._connections))
        timeouts = request.extensions.get("timeout", {})
        # A timer only when the request has to wait: each costs a little CPU, and most requests find a slot.
        if origin.slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await origin.slots.acquire()
            except TimeoutError as error:
                raise httpx.PoolTimeout("no connection free in time", request=request) from error
        else:
            await origin.slots.acquire()
        try:
            connection = await self._connection(origin, origin_key, timeouts, request)
            keep = False
            try:
                status, reason, headers, body, keep = await self._exchange(connection, request, timeouts)
            finally:
                if keep:
                    connection.idle_since = self._now()
                    origin.idle.append(connection)
                else:
                    connection.close()
        finally:
            origin.slots.release()
        return httpx.Response(
            status,
            headers=headers,
            content=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def _connection(
        self, origin: _Origin, origin_key: tuple[str, str, int], timeouts: dict, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin_key
        now = self._now()
        while origin.idle:
            connection = origin.idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await self._dial(host, port, self._ssl() if scheme == "https" else None)
        except TimeoutError as error:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from error
        except OSError as error:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {error}", request=request) from error
        return _Connection(reader, writer)

    async def _dial(self, host: str, port: int, tls: ssl.SSLContext | None) -> Stream:
        """Opens a connection to the origin (TLS with the host's name when `tls`, whichever address it reaches): the
        first of the host's addresses to connect (first_connection), so one that swallows the attempt does not make
        the origin read as down while its others are up. The caller bounds it by the connect timeout and turns an
        OSError into httpx's ConnectError."""
        addresses = await self._addresses(host, port)
        return await first_connection(
            [functools.partial(self._connect, address, port, tls=tls, server_hostname=host) for address in addresses]
        )

    async def _addresses(self, host: str, port: int) -> list[str]:
        """The addresses to dial for `host` (subclasses vet them: adapters/webhook_http.py)."""
        return await resolve(host, port)

    async def _exchange(
        self, connection: _Connection, request: httpx.Request, timeouts: dict
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        """Writes the request, reads the whole answer: status, reason, headers, body, whether to keep the
        connection."""
        body = await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
        has_host = False
        for name, value in request.headers.raw:
            lowered = name.lower()
            # The body is sent whole, so its length is known: never chunked.
            if lowered in (b"content-length", b"transfer-encoding"):
                continue
            has_host = has_host or lowered == b"host"
            head.append(b"%s: %s\r\n" % (name, value))
        if not has_host:
            head.append(b"Host: %s\r\n" % request.url.netloc)
        if body or request.method in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        try:
            connection.writer.write(b"".join(head) + body)
            if connection.writer.transport.get_write_buffer_size():
                # The socket did not take it all at once (a large body or a slow reader): wait, but not forever.
                async with asyncio.timeout(timeouts.get("write")):
                    await connection.writer.drain()
            else:
                await connection.writer.drain()
        except TimeoutError as error:
            raise httpx.WriteTimeout("writing the request timed out", request=request) from error
        except OSError as error:
            raise httpx.WriteError(f"writing the request failed: {error}", request=request) from error
        try:
            async with asyncio.timeout(timeouts.get("read")):
                return await self._read_response(connection.reader, request)
        except TimeoutError as error:
            raise httpx.ReadTimeout("the answer did not come in time", request=request) from error
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            raise httpx.RemoteProtocolError(f"malformed or cut answer: {error}", request=request) from error
        except OSError as error:
            raise httpx.ReadError(f"reading the answer failed: {error}", request=request) from error

    async def _read_response(
        self, reader: asyncio.StreamReader, request: httpx.Request
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        while True:
            version, status, reason, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if not 100 <= status < 200:
                break
        fields = {name.lower(): value for name, value in headers}
        connection_tokens = {token.strip().lower() for token in fields.get(b"connection", b"").split(b",")}
        keep = version == b"HTTP/1.1" and b"close" not in connection_tokens
        if request.method == "HEAD" or status in _NO_BODY_STATUSES:
            return status, reason, headers, b"", keep
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            body = await _read_chunked(reader)
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            if length > MAX_BODY_BYTES:
                raise ValueError(f"an answer of {length} bytes")
            body = await reader.readexactly(length)
        else:
            body = await _read_to_close(reader)
            keep = False
        headers, body = _decoded(headers, body)
        return status, reason, headers, body, keep

    async def aclose(self) -> None:
        for origin in self._origins.values():
            for connection in origin.idle:
                connection.close()
            origin.idle.clear()


async def open_stream(
    address: str, port: int, *, tls: ssl.SSLContext | None, server_hostname: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `address`; with `tls`, TLS asks for and checks `server_hostname`, whatever the address."""
    return await asyncio.open_connection(
        address, port, ssl=tls, server_hostname=server_hostname if tls else None, limit=MAX_HEAD_BYTES
    )


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (an address itself for an IP literal); OSError
    when it resolves to none."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # A link-local IPv6 answer comes back as "fe80::1%eth0": the zone stays, the address is dialled through it.
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    return addresses


async def first_connection(
    attempts: Sequence[Callable[[], Awaitable[Stream]]], *, delay: float = ATTEMPT_DELAY
) -> Stream:
    """The first of `attempts` (one per address, in the resolver's order) to connect, each started `delay`
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
    assert error is not None  # resolve never answers an empty list
    raise error


async def _abandon(attempts: set[asyncio.Future[Stream]]) -> None:
    for attempt in attempts:
        attempt.cancel()
    for outcome in await asyncio.gather(*attempts, return_exceptions=True):
        if isinstance(outcome, tuple):
            outcome[1].close()


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """What httpx's own transport verifies against: certifi's bundle, or the CA file or directory that SSL_CERT_FILE
    or SSL_CERT_DIR names (for an operator's private CA). Loaded once per container (it takes tens of ms) and
    shared by every thread's transports (an SSLContext may wrap sockets from several threads)."""
    return httpx.create_ssl_context()


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    status_line, *lines = head[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"not a header line: {line[:80]!r}")
        headers.append((name, value.strip()))
    return version, int(code), reason, headers


def _decoded(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The body with its Content-Encoding undone, at most MAX_BODY_BYTES of it, and the headers without
    Content-Encoding and Content-Length: httpx then takes the body as it is, instead of inflating it without a limit
    (ValueError for an answer decoded past the limit, in a coding other than gzip or deflate, or encoded twice)."""
    codings = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"content-encoding"
        for token in value.split(b",")
        if token.strip().lower() not in (b"", b"identity")
    ]
    if not codings:
        return headers, body
    if len(codings) > 1:
        raise ValueError(f"an answer encoded {len(codings)} times over ({b', '.join(codings)[:80]!r})")
    window_bits = _WINDOW_BITS.get(codings[0])
    if window_bits is None:
        raise ValueError(f"an answer in a content coding we do not read ({codings[0][:40]!r})")
    try:
        decoded = _inflate(body, window_bits)
    except zlib.error as error:
        if codings[0] != b"deflate":
            raise ValueError(f"an answer that is not valid {codings[0].decode()}: {error}") from error
        # "deflate" is zlib-wrapped by the standard, but some servers send the raw stream (httpx reads both).
        try:
            decoded = _inflate(body, -zlib.MAX_WBITS)
        except zlib.error as raw_error:
            raise ValueError(f"an answer that is not valid deflate: {raw_error}") from raw_error
    kept = [(name, value) for name, value in headers if name.lower() not in (b"content-encoding", b"content-length")]
    return kept, decoded


def _inflate(body: bytes, window_bits: int) -> bytes:
    # One byte past the limit at most is ever inflated: enough to tell the answer is too large.
    decoded = zlib.decompressobj(window_bits).decompress(body, MAX_BODY_BYTES + 1)
    if len(decoded) > MAX_BODY_BYTES:
        raise ValueError(f"an answer over {MAX_BODY_BYTES} bytes once decoded")
    return decoded


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, up to the empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise ValueError(f"a chunked answer over {MAX_BODY_BYTES} bytes")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("a chunk not followed by CRLF")


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while chunk := await reader.read(64 * 1024):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise ValueError(f"an answer over {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)

"""The SSRF guard's pure half: which client webhook URLs and which addresses a webhook may reach."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urljoin, urlsplit

from sms_gateway.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services: EC2's (IPv4, and IPv6 on Nitro); GCP and Azure answer on 169.254.169.254 too.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; AWS uses it inside VPCs too
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
# IPv6 forms that carry an IPv4 address the packet really goes to (the v4 decides whether it is allowed).
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291), never a real public destination
# IPv4-translated (SIIT, RFC 2765): only meaningful inside a translator's own network, never a public destination.
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
# Names that only ever mean this machine or a private network, whatever DNS says.
LOCAL_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata"})
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
HOST_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$"
)
# What browsers and libc (inet_aton) read as IPv4 besides dotted decimal: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
# Characters that different URL parsers read differently (WHATWG turns \ into /; spaces and controls get stripped).
AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """scheme://host:port of `url` (the default port spelt out), or None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    port = port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def endpoint_of(url: str) -> str | None:
    """The origin and path of `url` (an empty path read as "/"), without its query or fragment: two URLs with the
    same endpoint name the same hook whatever their query says. None when it has no origin."""
    origin = origin_of(url)
    if origin is None:
        return None
    return origin + (urlsplit(url).path or "/")


# How much of a redirect's Location a failure record shows: enough for any webhook URL a client would set.
MAX_SHOWN_LOCATION = 300


def redirect_target(url: str, location: str | None) -> str | None:
    """Where a redirect answered to a post to `url` points, as the client could set it: a relative Location read
    against `url`, without user name, password, query or fragment (a signed URL's token is nobody's business in a
    failure listing), at most MAX_SHOWN_LOCATION characters. None when there is no Location or it is no URL."""
    if not location:
        return None
    try:
        parts = urlsplit(urljoin(url, AMBIGUOUS.sub("", location)))
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path or '/'}"
    if len(shown) > MAX_SHOWN_LOCATION:
        shown = shown[: MAX_SHOWN_LOCATION - 3] + "..."
    return f"{shown} (its query left out)" if parts.query else shown


def forbidden_reason(ip: IPAddress | str) -> str | None:
    """Why a webhook must not reach this address (e.g. "loopback"), or None for a public unicast address."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local zone) address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            why = forbidden_reason(embedded)
            if why is not None:
                return f"{why} in IPv6 form ({embedded})"
            if address.sixtofour is None:
                return None  # IPv4-mapped or NAT64 of a public address: the packet goes to that public address
        if address.is_site_local:
            return "a site-local address"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address in IPV4_COMPATIBLE:
        return "an IPv4-compatible IPv6 address (deprecated, not routable)"
    if isinstance(address, ipaddress.IPv6Address) and address in IPV4_TRANSLATED:
        return "an IPv4-translated IPv6 address (a translator's internal form, not routable)"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if any(address in network for network in PRIVATE_NETWORKS if network.version == address.version):
        return "a private address"
    if not address.is_global:
        return "a reserved address (not globally routable)"
    return None


def is_forbidden_address(ip: IPAddress | str) -> bool:
    """True when a webhook must not connect to `ip` (the connect-time guard asks this of every resolved address)."""
    return forbidden_reason(ip) is not None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """`host` read as IPv4 the way browsers and inet_aton do (1 to 4 decimal, octal or hex parts); None if a name."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot still means the same address
    if not 1 <= len(parts) <= 4 or not all(NUMERIC_LABEL.match(part) for part in parts):
        return None
    numbers = [_number(part) for part in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, n in enumerate(leading):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if set(part) <= set("01234567") else 256**4  # 08, 09: not a number anyone accepts
    return int(part)


def require_safe_webhook_url(url: str, *, allow_local: bool) -> str:
    """`url` when a client webhook may be sent to it, else InvalidRequest saying what is wrong.

    Checks the URL alone, without DNS (names can re-point at any time): https only, no credentials in it, and no
    host that is plainly local (loopback, private, link-local, metadata, `localhost`, `*.internal`...). The
    notifier's connect-time guard (adapters/webhook_http.py) then checks every address the name resolves to.
    `allow_local` (the local stack only) also allows http and local hosts. Used for account webhooks and for
    per-batch callback URLs alike."""
    if AMBIGUOUS.search(url):
        raise InvalidRequest(f"webhook URL {url!r} must not contain spaces, backslashes or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidRequest(f"webhook URL {url!r} is not a valid URL: {error}") from error
    schemes = ("https", "http") if allow_local else ("https",)
    if parts.scheme not in schemes:
        raise InvalidRequest(f"webhook URL {url!r} must be an absolute {' or '.join(schemes)} URL")
    if "@" in parts.netloc:
        raise InvalidRequest(f"webhook URL {url!r} must not carry a user name or password (user:pass@)")
    host = parts.hostname
    if not host:
        raise InvalidRequest(f"webhook URL {url!r} must be an absolute {' or '.join(schemes)} URL with a host")
    if port == 0:
        raise InvalidRequest(f"webhook URL {url!r} must not use port 0")
    address, name = _read_host(url, host, bracketed=parts.netloc.startswith("["))
    if allow_local:
        return url
    if address is not None:
        why = forbidden_reason(address)
        if why is not None:
            raise InvalidRequest(
                f"webhook URL {url!r} points at {address}, {why}: webhooks must reach a public (globally routable) "
                "address"
            )
    elif name in LOCAL_NAMES or name.endswith(LOCAL_SUFFIXES):
        raise InvalidRequest(f"webhook URL {url!r} names a local host ({name}): webhooks must reach a public host")
    return url


def _read_host(url: str, host: str, *, bracketed: bool) -> tuple[IPAddress | None, str]:
    """The IP a literal host stands for (or None) and the ASCII host name; refuses hosts parsers read differently."""
    if bracketed:
        try:
            return ipaddress.IPv6Address(host), host
        except ValueError as error:
            raise InvalidRequest(f"webhook URL {url!r} has an invalid IPv6 address [{host}]") from error
    if not host.isascii():
        host = _ascii_name(url, host)
    elif "xn--" in host:
        _check_a_labels(url, host)
    address = parse_ipv4(host)
    name = host.removesuffix(".")
    if address is not None:
        return address, name
    if not HOST_NAME.match(name):
        raise InvalidRequest(f"webhook URL {url!r} has an invalid host name {host!r}")
    if NUMERIC_LABEL.match(name.rpartition(".")[2]):
        # A name whose last label is a number is an address to a browser or libc: refuse the ones we cannot read.
        raise InvalidRequest(f"webhook URL {url!r} has a host {host!r} that is neither a host name nor an IP address")
    return None, name


def _ascii_name(url: str, host: str) -> str:
    """An international host name in ASCII as the notifier's httpx writes it: IDNA 2008, by the idna package (httpx's
    own dependency), or InvalidRequest. Python's "idna" codec is IDNA 2003, which takes names httpx refuses (a symbol:
    `☃.net`), so a URL set with one could never be posted to, and maps some to another host (`faß.de` to `fass.de`)
    than the one httpx dials. Imported here, not at the top: its tables cost the API's cold start, for rare hosts."""
    import idna

    try:
        return idna.encode(host.lower()).decode("ascii")
    except UnicodeError as error:  # idna.IDNAError is one
        raise _not_idna(url, host, error) from error


def _check_a_labels(url: str, host: str) -> None:
    """An ASCII host's xn-- labels must be valid A-labels: httpx's URL.host decodes a host that starts with one (the
    notifier's transport reads it to dial) and raises on a broken one (`https://xn--a.example/`), so every post to it
    failed until the notification was dead (until session 34); no such name can be registered anywhere."""
    import idna

    try:
        idna.decode(host.removesuffix("."))
    except UnicodeError as error:
        raise _not_idna(url, host, error) from error


def _not_idna(url: str, host: str, error: UnicodeError) -> InvalidRequest:
    return InvalidRequest(
        f"webhook URL {url!r} has a host name {host!r} that is not a valid international (IDNA 2008) name: {error}"
    )

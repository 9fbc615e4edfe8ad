"""The SSRF guard's set-time checks (domain/webhook_urls.py) and the account settings that use them."""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime
from typing import Any

import pytest

from sms_gateway.domain.webhook_urls import (
    _read_host,
    forbidden_reason,
    is_forbidden_address,
    parse_ipv4,
    redirect_target,
    require_safe_webhook_url,
)
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic import accounts
from sms_gateway.ports import AccountChanges
from tests.fakes import FakeSecretBox, InMemoryStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BOX = FakeSecretBox()

GOOD = [
    "https://client.example/dlr",
    "https://client.example:8443/hooks/dlr?tenant=7#frag",
    "HTTPS://Client.Example/DLR",  # schemes and host names are case-insensitive
    "https://8.8.8.8/dlr",
    "https://[2606:4700:4700::1111]/dlr",
    "https://[::ffff:8.8.8.8]/dlr",  # IPv4-mapped form of a public address
    "https://bücher.example/dlr",  # an international name (its xn-- form is what is dialled)
    "https://client.example./dlr",  # a fully qualified name with its root dot
]

BAD = [
    # (url, what the message must say)
    ("http://client.example/dlr", "must be an absolute https URL"),
    ("ftp://client.example/dlr", "must be an absolute https URL"),
    ("client.example/dlr", "must be an absolute https URL"),
    ("https://", "with a host"),
    ("https:///dlr", "with a host"),
    ("https://:443/dlr", "with a host"),
    ("https://user:pass@client.example/dlr", "user name or password"),
    ("https://user@client.example/dlr", "user name or password"),
    ("https://client.example\\@127.0.0.1/", "backslashes"),
    ("https://client .example/", "spaces"),
    ("https://client.example/\n", "control characters"),
    ("https://client.example:99999/", "not a valid URL"),
    ("https://client.example:0/", "port 0"),
    ("https://[::1/", "not a valid URL"),
    ("https://cli%65nt.example/", "invalid host name"),
    ("https://1.2.3.999/", "neither a host name nor an IP address"),
    ("https://09.0.0.1/", "neither a host name nor an IP address"),
    # IPv4 literals, including the forms browsers and libc read as IPv4
    ("https://127.0.0.1/", "127.0.0.1, a loopback address"),
    ("https://127.0.0.1./", "127.0.0.1, a loopback address"),
    ("https://2130706433/", "127.0.0.1, a loopback address"),
    ("https://0x7f000001/", "127.0.0.1, a loopback address"),
    ("https://0X7F.1/", "127.0.0.1, a loopback address"),
    ("https://0177.0.0.1/", "127.0.0.1, a loopback address"),
    ("https://127.1/", "127.0.0.1, a loopback address"),
    ("https://10.0.0.5/", "10.0.0.5, a private address"),
    ("https://172.16.3.4/", "a private address"),
    ("https://192.168.1.1/", "a private address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a cloud metadata address"),
    ("https://2852039166/", "169.254.169.254, a cloud metadata address"),
    ("https://169.254.10.1/", "a link-local address"),
    ("https://100.64.0.1/", "a shared (carrier-grade NAT) address"),
    ("https://0.0.0.0/", "the unspecified address"),
    ("https://0/", "the unspecified address"),
    ("https://224.0.0.1/", "a multicast address"),
    ("https://198.51.100.7/", "a reserved address"),
    ("https://255.255.255.255/", "a reserved address"),
    # IPv6 literals
    ("https://[::1]/", "::1, a loopback address"),
    ("https://[::]/", "the unspecified address"),
    ("https://[fe80::1]/", "a link-local address"),
    ("https://[fe80::1%25eth0]/", "scoped"),
    ("https://[fc00::1]/", "a private address"),
    ("https://[fd00:ec2::254]/", "a cloud metadata address"),
    ("https://[ff02::1]/", "a multicast address"),
    ("https://[fec0::1]/", "a site-local address"),
    ("https://[2001:db8::1]/", "a reserved address"),
    ("https://[::ffff:127.0.0.1]/", "a loopback address in IPv6 form (127.0.0.1)"),
    ("https://[::ffff:a9fe:a9fe]/", "a cloud metadata address in IPv6 form (169.254.169.254)"),
    ("https://[64:ff9b::a00:5]/", "a private address in IPv6 form (10.0.0.5)"),
    ("https://[2002:a00:5::1]/", "a private address in IPv6 form (10.0.0.5)"),
    ("https://[::7f00:1]/", "IPv4-compatible"),
    # names that mean this machine or a private network
    ("https://localhost/dlr", "names a local host (localhost)"),
    ("https://LOCALHOST./dlr", "names a local host (localhost)"),
    ("https://hooks.localhost/dlr", "names a local host"),
    ("https://printer.local/dlr", "names a local host"),
    ("https://db.corp.internal/dlr", "names a local host"),
    ("https://metadata.google.internal/computeMetadata/v1/", "names a local host (metadata.google.internal)"),
    # a circled L: IDNA 2003 maps it to "l"; httpx's IDNA 2008 refuses it, and so does the check, before any mapping
    ("https://\u24c1ocalhost/dlr", "not a valid international"),
]


@pytest.mark.parametrize("url", GOOD)
def test_a_public_https_url_is_accepted_as_given(url: str) -> None:
    # Given a public https URL / When it is checked / Then it comes back unchanged
    assert require_safe_webhook_url(url, allow_local=False) == url


@pytest.mark.parametrize(("url", "fragment"), BAD)
def test_an_unsafe_url_is_refused_saying_what_is_wrong(url: str, fragment: str) -> None:
    # Given an unsafe URL / When it is checked off the local stack / Then the message names the problem
    with pytest.raises(InvalidRequest, match="webhook URL") as refused:
        require_safe_webhook_url(url, allow_local=False)
    assert fragment in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/dlr",
        "http://localhost:8080/dlr",
        "https://[::1]:8443/dlr",
        "http://hooks.localhost/dlr",
        "http://10.0.0.5/dlr",
        "HTTP://127.0.0.1/dlr",
    ],
)
def test_the_local_stack_allows_http_and_local_hosts(url: str) -> None:
    # Given the local stack (its tests run webhook servers on 127.0.0.1) / Then http and loopback pass
    assert require_safe_webhook_url(url, allow_local=True) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://127.0.0.1/dlr", "must be an absolute https or http URL"),
        ("http://user:pw@127.0.0.1/dlr", "user name or password"),
        ("http:///dlr", "with a host"),
        ("http://127.0.0.1\\@x/", "backslashes"),
    ],
)
def test_the_local_stack_still_refuses_malformed_urls(url: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        require_safe_webhook_url(url, allow_local=True)


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.1", "0x7f.0.0.1", "1.2.3.4", "0", "017700000001"]
)
def test_numeric_hosts_read_as_libc_reads_them(host: str) -> None:
    # Given a numeric host that getaddrinfo/inet_aton would dial / Then we read the same address from it
    assert parse_ipv4(host) == ipaddress.IPv4Address(socket.inet_aton(host))


@pytest.mark.parametrize("host", ["client.example", "1.2.3.4.5", "256.1.1.1", "08.1.1.1", "1.2.3.com", "4294967296"])
def test_hosts_that_are_not_ipv4_are_not_read_as_ipv4(host: str) -> None:
    assert parse_ipv4(host) is None


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("93.184.216.34", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:93.184.216.34", False),
        ("64:ff9b::5db8:d822", False),  # NAT64 of a public address
        ("127.0.0.53", True),
        ("10.1.2.3", True),
        ("100.127.255.254", True),
        ("169.254.169.254", True),
        ("169.254.170.2", True),  # the ECS/Lambda container credentials endpoint is link-local too
        ("fd00:ec2::254", True),
        ("::ffff:10.0.0.5", True),
        ("64:ff9b::7f00:1", True),
        ("2002:7f00:1::", True),
        ("::", True),
        ("ff05::1", True),
        ("240.0.0.1", True),
        # IPv4-translated (SIIT): 169.254.169.254, 127.0.0.1 and even a public address in a translator's own form
        ("::ffff:0:a9fe:a9fe", True),
        ("::ffff:0:7f00:1", True),
        ("::ffff:0:5db8:d822", True),
    ],
)
def test_the_connect_time_guard_asks_which_addresses_are_forbidden(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(address) is forbidden
    assert is_forbidden_address(ipaddress.ip_address(address)) is forbidden
    assert (forbidden_reason(address) is not None) is forbidden


class WebhookStore(InMemoryStore):
    """InMemoryStore plus the one AccountAdmin write set_webhooks makes."""

    def update_account(self, account_id: str, changes: AccountChanges) -> Any:
        update: dict[str, Any] = {
            name: value for name, value in changes if name not in ("clear", "replacing") and value is not None
        }
        update |= dict.fromkeys(changes.clear)
        self.accounts[account_id] = self.accounts[account_id].model_copy(update=update)
        return self.accounts[account_id]


@pytest.fixture
def store() -> WebhookStore:
    return WebhookStore()


@pytest.fixture
def account_id(store: WebhookStore) -> str:
    account, _, _ = accounts.create_account(
        store, BOX, name="Acme", senders=["ACME"], credits=10, now=NOW, dlr_url="https://client.example/dlr"
    )
    return account.account_id


@pytest.mark.parametrize("url", ["https://169.254.169.254/", "https://[::1]/", "https://localhost/in"])
def test_set_webhooks_refuses_an_internal_url_and_changes_nothing(
    store: WebhookStore, account_id: str, url: str
) -> None:
    # Given an account with a public DLR URL
    before = store.accounts[account_id]
    # When an operator points its webhooks at an internal address (and asks for a new token at the same time)
    with pytest.raises(InvalidRequest, match="webhook URL"):
        accounts.set_webhooks(store, BOX, account_id, dlr_url=url, inbound_url=url, rotate_token=True)
    # Then nothing changed: not the URLs, not the token
    assert store.accounts[account_id] == before


def test_set_webhooks_keeps_a_public_url(store: WebhookStore, account_id: str) -> None:
    updated, _ = accounts.set_webhooks(store, BOX, account_id, inbound_url="https://client.example/in")
    assert updated.inbound_url == "https://client.example/in"


def test_the_local_stack_may_point_webhooks_at_loopback(store: WebhookStore, account_id: str) -> None:
    updated, _ = accounts.set_webhooks(store, BOX, account_id, inbound_url="http://127.0.0.1:9/in", allow_http=True)
    assert updated.inbound_url == "http://127.0.0.1:9/in"


def test_create_account_refuses_a_metadata_webhook_and_creates_nothing(store: WebhookStore) -> None:
    with pytest.raises(InvalidRequest, match="cloud metadata address"):
        accounts.create_account(
            store, BOX, name="Evil", senders=["EVIL"], credits=10, now=NOW, inbound_url="https://169.254.169.254/"
        )
    assert store.accounts == {}


@pytest.mark.parametrize("url", ["https://☃.net/hook", "https://i♥sms.example/dlr"])
def test_a_webhook_url_accepted_when_set_is_one_the_notifier_can_post_to(url):
    import httpx

    try:
        require_safe_webhook_url(url, allow_local=False)
    except InvalidRequest:
        return  # refused when set, with a reason: fine
    # Accepted: then the notifier's client must be able to address it
    assert httpx.URL(url).raw_host


def test_an_international_host_is_refused_saying_why_and_checked_as_the_notifier_dials_it():
    # Given a symbol host name, which IDNA 2003 took and httpx (IDNA 2008) refuses
    with pytest.raises(InvalidRequest, match="not a valid international \\(IDNA 2008\\) name"):
        require_safe_webhook_url("https://☃.net/hook", allow_local=False)
    # And a name both read, but as two hosts (IDNA 2003 maps ß to ss): the one checked is the one httpx dials
    assert _read_host("https://faß.example/", "faß.example", bracketed=False) == (None, "xn--fa-hia.example")


# Hosts whose first label is xn-- and no valid A-label: httpx's URL.host, which the notifier's transport reads to dial
# them, decodes such a name and raises.
BROKEN_PUNYCODE = ["https://xn--a.example/dlr", "https://xn--localhost/"]


@pytest.mark.parametrize("url", [*BROKEN_PUNYCODE, "https://api.xn--a.example/dlr"])
def test_a_host_in_broken_punycode_is_refused_when_set_saying_why(url):
    # Given an ASCII host with an xn-- label that decodes to no valid name (a typo in a copied punycode domain): no
    # such name can be registered, and as the first label httpx refuses it
    # When it is set as a webhook URL / Then it is refused, saying why, as a Unicode name httpx refuses is
    with pytest.raises(InvalidRequest, match="not a valid international \\(IDNA 2008\\) name"):
        require_safe_webhook_url(url, allow_local=False)


@pytest.mark.parametrize("url", BROKEN_PUNYCODE)
def test_a_post_to_a_host_in_broken_punycode_is_a_failed_delivery(url, monkeypatch):
    from sms_gateway import consumers
    from sms_gateway.adapters import http, webhook_http
    from sms_gateway.logic.notify import WebhookFailed

    async def no_lookup(host: str, port: int) -> list[str]:
        raise AssertionError(f"looked up {host}")

    monkeypatch.setattr(webhook_http, "resolve", no_lookup)
    # Given such a URL stored before the check refused it (or a batch's callback_url queued then)
    # When the notifier posts to it / Then it is a failed delivery with a reason (recorded, on the retry schedule),
    # not an exception that crashes the record: it came back every visibility timeout with no failure record, and
    # the redrive parked it after 12 receives with no reason
    with pytest.raises(WebhookFailed, match="host"):
        http.run(consumers.post_webhook(url, {"Content-Type": "application/json"}, b"{}"))


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("/dlr/", "https://client.example/dlr/"),
        ("https://client.example/dlr/", "https://client.example/dlr/"),
        ("https://user:pa55@client.example:8443/dlr", "https://client.example:8443/dlr"),
        ("https://client.example/dlr?sig=s3cret#top", "https://client.example/dlr (its query left out)"),
        ("//[2001:db8::1]/hook", "https://[2001:db8::1]/hook"),
        ("https://client.example", "https://client.example/"),
    ],
)
def test_a_redirect_is_shown_as_a_whole_url_without_credentials_query_or_fragment(location: str, shown: str) -> None:
    # Given a post to https://client.example/dlr answered with a redirect to `location`
    # Then the failure record shows where it pointed as a URL the client can set, and nothing secret
    assert redirect_target("https://client.example/dlr", location) == shown


@pytest.mark.parametrize("location", [None, "", "https://client.example:99999/dlr", "mailto:"])
def test_a_redirect_without_a_readable_url_shows_nothing(location: str | None) -> None:
    assert redirect_target("https://client.example/dlr", location) is None


def test_a_long_redirect_is_shown_cut() -> None:
    shown = redirect_target("https://client.example/dlr", "/" + "a" * 2000)
    assert shown is not None and len(shown) == 300 and shown.endswith("...")

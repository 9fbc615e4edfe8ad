"""Kannel upstream adapter: sendsms requests and answers, DLR and MO callbacks, token verification, and a run
against a real Kannel (bearerbox + smsbox + fakesmsc) when one is installed."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

import httpx
import pytest

from sms_gateway.adapters.providers import FACTORIES
from sms_gateway.adapters.providers.kannel import KannelProvider
from sms_gateway.domain.models import CallbackRequest, SubmitRequest
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError
from sms_gateway_tools.kannel_check import KANNEL_CONF, Recorder, callback_request, free_port, stop
from sms_gateway_tools.upstream_check import captured

TOKEN = "kannel-callback-token-0123456789"
REF = "1001.71800327346180097.71800327346180098"
DLR_BASE = "https://gw.example.com/callbacks/kannel/dlr"
CONFIG = {
    "type": "kannel",
    "url": "http://kannel.example:13013/",
    "username": "tester",
    "password": "foobar",
    "callback_token": TOKEN,
}


def provider(handler: Callable[[httpx.Request], httpx.Response], **overrides: Any) -> KannelProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return KannelProvider.from_config("kannel", {**CONFIG, **overrides}, client=client)


def submit_request(text: str = "Hello Buddy. Let's go!", dlr_url: str | None = DLR_BASE) -> SubmitRequest:
    return SubmitRequest(client_ref=REF, sender="48974", msisdn="+2348020000000", text=text, dlr_url=dlr_url)


def answer(status: int, body: str, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body, headers={"Content-Type": "text/html", **headers})

    return handler


def callback(url: str, method: str = "GET", body: str = "", headers: dict[str, str] | None = None) -> CallbackRequest:
    """A callback as the webhook builds it: query string decoded, header names lowercased."""
    parts = urlsplit(url)
    return CallbackRequest(
        method=method,
        url=f"https://gw.example.com{parts.path}",
        headers={k.lower(): v for k, v in (headers or {}).items()},
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        body=body,
    )


def kannel_expands(dlr_url: str, values: dict[str, str]) -> str:
    """What Kannel does to a dlr-url before it fetches it: each %-escape replaced by its URL-encoded value."""
    out, i = [], 0
    while i < len(dlr_url):
        if dlr_url[i] == "%" and i + 1 < len(dlr_url) and dlr_url[i + 1] in values:
            out.append(quote(values[dlr_url[i + 1]], safe=""))
            i += 2
        else:
            out.append(dlr_url[i])
            i += 1
    return "".join(out)


# What a real Kannel 1.4.5 (Debian's bearerbox and smsbox) sent over SMPP: tools/sms_gateway_tools/kannel_check.py
KANNEL_CAPTURE = Path(__file__).parents[1] / "fixtures" / "kannel-1.4.5-smpp.json"


def kannel_captured(scenario: str | None = None) -> list[dict[str, Any]]:
    return captured(KANNEL_CAPTURE, scenario)


def replayed(recorded: dict[str, Any], **query: str) -> CallbackRequest:
    """A captured request as the webhook hands it to the adapter, `query` values replaced (our ref, our token)."""
    request = callback(recorded["path"], recorded["method"], recorded["body"], recorded["headers"])
    return request.model_copy(update={"query": {**request.query, **query}})


# --- submit -------------------------------------------------------------------------------------------------------


def test_the_message_s_remaining_validity_goes_as_kannel_s_validity_minutes() -> None:
    # Given a message with 1380 minutes of its validity left
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery", headers={"Content-Type": "text/html"})

    request = submit_request().model_copy(update={"validity_minutes": 1380})
    asyncio.run(provider(handler).submit(request))
    # Then Kannel tells the SMSC to try it for that many minutes (and no longer), and without one it says nothing
    assert seen[0].url.params["validity"] == "1380"
    asyncio.run(provider(handler).submit(submit_request()))
    assert "validity" not in seen[1].url.params


def test_submit_sends_the_documented_sendsms_get_and_takes_202_accepted() -> None:
    # Given Kannel answering sendsms as its user guide shows
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery", headers={"Content-Type": "text/html"})

    # When a GSM-7 message with a DLR URL is submitted
    result = asyncio.run(provider(handler).submit(submit_request()))

    # Then one GET /cgi-bin/sendsms carries every documented field, and our reference is the upstream id
    assert result.upstream_message_id == REF
    (request,) = seen
    assert request.method == "GET"
    assert request.url.host == "kannel.example"
    assert request.url.port == 13013
    assert request.url.path == "/cgi-bin/sendsms"
    params = dict(request.url.params)
    dlr_url = params.pop("dlr-url")
    assert params == {
        "username": "tester",
        "password": "foobar",
        "from": "48974",
        "to": "2348020000000",
        "text": "Hello Buddy. Let's go!",
        "charset": "UTF-8",
        "coding": "0",
        "dlr-mask": "31",
    }
    # And the DLR URL carries our reference, our token and Kannel's escape codes (sent URL-encoded)
    assert dlr_url == (f"{DLR_BASE}?ref={REF}&token={TOKEN}&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P")
    assert "dlr-url=https%3A%2F%2Fgw.example.com" in str(request.url)
    assert "%25d" in str(request.url)


def sendsms_fields(request: httpx.Request) -> dict[str, bytes]:
    """A sendsms request's query as Kannel's CGI parsing reads it: each variable's octets, percent-decoded."""
    return {key: value.encode("latin-1") for key, value in parse_qsl(request.url.query.decode(), encoding="latin-1")}


def test_a_long_message_kannel_cuts_as_it_was_counted_goes_whole_in_one_sendsms_with_the_dlr_url_of_any_message() -> (
    None
):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    base = f"{DLR_BASE}?ref={REF}&token={TOKEN}&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P"
    # Given long texts Kannel cuts where the gateway counted them: GSM-7 with a € across a boundary (Kannel keeps
    # escape pairs whole), UCS-2 with an emoji inside a part
    for text in ("a" * 152 + "€" + "a" * 152, "я" * 65 + "😀" + "я" * 67):
        seen.clear()
        # When it is submitted
        asyncio.run(provider(handler, max_parts=3).submit(submit_request(text=text)))
        # Then it goes whole, as one sendsms, no udh: Kannel cuts and concatenates it, each part a PDU of its queue
        [request] = seen
        fields = sendsms_fields(request)
        assert fields["text"].decode() == text
        assert "udh" not in fields
        # And its DLR URL is a message's: Kannel reports a long message by its first part only
        assert request.url.params["dlr-url"] == base
    # As a message of one part's
    seen.clear()
    asyncio.run(provider(handler).submit(submit_request(text="x" * 160)))
    [single] = seen
    assert "udh" not in sendsms_fields(single)
    assert single.url.params["dlr-url"] == base


EMOJI_ON_A_BOUNDARY = "я" * 66 + "😀" + "я" * 66  # 3 parts as counted; Kannel's blind cut would split the emoji


def test_a_text_kannel_would_cut_through_an_emoji_goes_whole_in_one_sendsms_padded_so_kannel_cuts_it_as_counted() -> (
    None
):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    # Given 134 UTF-16 units whose emoji straddles unit 67, where Kannel cuts UCS-2 (134 octets): counted and
    # charged as 3 parts, the emoji moved whole into part 2
    # When it is submitted
    asyncio.run(provider(handler, max_parts=3).submit(submit_request(text=EMOJI_ON_A_BOUNDARY)))
    # Then it goes as one sendsms, UCS-2, no udh, its text with a zero width space before the emoji
    [request] = seen
    fields = sendsms_fields(request)
    text = fields["text"].decode()
    assert text == "я" * 66 + "\u200b" + "😀" + "я" * 66
    assert fields["coding"] == b"2" and "udh" not in fields
    # So Kannel's blind cut (every 134 octets) gives the 3 parts counted, the emoji whole at the start of part 2
    encoded = text.encode("utf-16-be")
    assert [encoded[i : i + 134].decode("utf-16-be") for i in range(0, len(encoded), 134)] == [
        "я" * 66 + "\u200b",
        "😀" + "я" * 65,
        "я",
    ]
    # And its DLR URL is any message's
    base = f"{DLR_BASE}?ref={REF}&token={TOKEN}&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P"
    assert request.url.params["dlr-url"] == base


def test_a_text_kannel_would_cut_through_an_emoji_refused_for_now_is_refused_whole_nothing_sent() -> None:
    # When Kannel answers 503 (its queue full) or 403 Not routable for such a text: one sendsms, nothing taken
    for refusal, permanent in ((answer(503, "Temporal failure"), False), (answer(403, "Not routable"), True)):
        with pytest.raises(UpstreamError) as refused:
            asyncio.run(provider(refusal, max_parts=3).submit(submit_request(text=EMOJI_ON_A_BOUNDARY)))
        # Then it is not taken, whole, as a message of one part: retried, or offered to the fallback
        assert (refused.value.maybe_taken, refused.value.unavailable, refused.value.permanent) == (
            False,
            True,
            permanent,
        )


def test_a_report_on_the_url_a_long_message_was_handed_over_with_before_is_the_whole_message_s() -> None:
    # Given the URL a long message was handed to Kannel with from 2026-12-06 until session 35: &part=%F, which Kannel
    # fills in with the SMSC's id for the message's first part, the one part it asks a receipt for
    dlr_url = f"{DLR_BASE}?ref={REF}&token={TOKEN}&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P&part=%F"
    kannel = provider(answer(202, "0: Accepted for delivery"))
    # Then each of its reports is the message's, whatever %F is
    for smsc_id in ("0a1b2c3d", "", "9" * 65):
        called = kannel_expands(dlr_url, {"d": "1", "A": "stat:DELIVRD", "T": "1795309364", "F": smsc_id})
        (report,) = kannel.parse_delivery_reports(callback(called))
        assert (report.client_ref, report.status, report.part) == (REF, MessageStatus.DELIVERED, None)


def test_submit_asks_for_ucs2_when_the_text_is_not_gsm7() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    asyncio.run(provider(handler).submit(submit_request(text="Hello ™ world")))

    assert seen[0].url.params["coding"] == "2"
    assert seen[0].url.params["charset"] == "UTF-8"
    assert seen[0].url.params["text"] == "Hello ™ world"


def test_submit_without_a_dlr_url_asks_for_no_reports_and_names_a_configured_smsc() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    asyncio.run(provider(handler, smsc="mtn-smpp").submit(submit_request(dlr_url=None)))

    params = seen[0].url.params
    assert "dlr-mask" not in params
    assert "dlr-url" not in params
    assert params["smsc"] == "mtn-smpp"


def test_queued_for_later_delivery_is_a_take() -> None:
    result = asyncio.run(provider(answer(202, "3: Queued for later delivery")).submit(submit_request()))
    assert result.upstream_message_id == REF


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "Missing receiver number, rejected"),
        (400, "Sender missing and no global set, rejected"),
        (400, "Number(s) has/have been denied by white- and/or black-lists."),
    ],
)
def test_4xx_answers_are_permanent(status: int, body: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    assert (raised.value.permanent, raised.value.unavailable) == (True, False)
    assert body in raised.value.message


def test_503_temporal_failure_is_transient_and_unavailable() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(503, "Temporal failure, try again later.")).submit(submit_request()))
    assert raised.value.permanent is False
    assert raised.value.unavailable is True


def test_429_is_a_throttle_with_retry_after() -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(429, "slow down", **{"Retry-After": "7"})).submit(submit_request()))
    assert raised.value.permanent is False
    assert raised.value.retry_after == 7.0
    assert raised.value.unavailable is False


@pytest.mark.parametrize("error", [httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"), httpx.ConnectError("no")])
def test_timeouts_and_connection_errors_are_transient(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(handler).submit(submit_request()))
    assert raised.value.permanent is False
    assert raised.value.unavailable is True


# --- delivery reports -------------------------------------------------------------------------------------------

RECEIPT = (
    "id:0123456789 sub:001 dlvrd:{dlvrd} submit date:2611220102 done date:2611220107 stat:{stat} err:{err} text:Hello"
)


def dlr(dlr_type: int, answer_text: str = "", token: str = TOKEN) -> CallbackRequest:
    """A DLR exactly as Kannel 1.4.5 fetched it in our run (GET, values in the query string)."""
    query = {
        "ref": REF,
        "token": token,
        "type": str(dlr_type),
        "answer": answer_text,
        "ts": "1795309364",
        "smsc": "fake",
        "to": "+2348020000000",
        "from": "48974",
    }
    url = f"{DLR_BASE}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return callback(url)


@pytest.mark.parametrize(
    ("dlr_type", "answer_text", "status", "error_code"),
    [
        (8, "ACK/", MessageStatus.SUBMITTED, None),
        (4, "", MessageStatus.SUBMITTED, None),
        (1, RECEIPT.format(dlvrd="001", stat="DELIVRD", err="000"), MessageStatus.DELIVERED, None),
        (1, "", MessageStatus.DELIVERED, None),
        (2, RECEIPT.format(dlvrd="000", stat="UNDELIV", err="001"), MessageStatus.FAILED, "001"),
        (2, RECEIPT.format(dlvrd="000", stat="EXPIRED", err="027"), MessageStatus.EXPIRED, "027"),
        (2, RECEIPT.format(dlvrd="000", stat="REJECTD", err="011"), MessageStatus.REJECTED, "011"),
        (2, RECEIPT.format(dlvrd="000", stat="DELETED", err="000"), MessageStatus.FAILED, None),
        (0x22, "", MessageStatus.EXPIRED, None),
        (16, "NACK/0x0000000b/Invalid Destination Address", MessageStatus.REJECTED, "0x0000000b"),
        (16, "NACK/", MessageStatus.REJECTED, None),
        (16, "NACK/Retry later", MessageStatus.REJECTED, None),
    ],
)
def test_dlr_types_and_receipts_map_to_our_statuses(
    dlr_type: int, answer_text: str, status: MessageStatus, error_code: str | None
) -> None:
    kannel = provider(answer(202, ""))
    request = dlr(dlr_type, answer_text)

    assert kannel.verify_callback(request) is True
    (report,) = kannel.parse_delivery_reports(request)

    assert report.status is status
    assert report.client_ref == REF
    assert report.upstream_message_id == REF
    assert report.upstream == "kannel"
    assert report.error_code == error_code
    assert report.reported_at == "2026-11-22T01:02:44.000000Z"


@pytest.mark.parametrize("ts", ["9" * 5000, "999999999999", "1795309364.5", ""])
def test_a_time_that_is_not_unix_seconds_leaves_a_dlr_or_mo_untimed_instead_of_failing_it(ts: str) -> None:
    # Given a DLR and an MO whose `ts` is digits int() will not read, a year past 9999, or no whole seconds at all
    kannel = provider(answer(202, ""))
    report_request = dlr(1, RECEIPT.format(dlvrd="001", stat="DELIVRD", err="000"))
    report_request = report_request.model_copy(update={"query": {**report_request.query, "ts": ts}})
    sms_request = mo({"token": TOKEN, "from": "2348020000000", "to": "48974", "ts": ts}, body="hi")
    # When they are parsed, then each is taken without its time (an exception was a 500 of the webhook function); the
    # MO is timed when it was received
    (report,) = kannel.parse_delivery_reports(report_request)
    assert (report.status, report.reported_at) == (MessageStatus.DELIVERED, None)
    assert kannel.parse_inbound(sms_request).received_at.startswith(str(datetime.now(UTC).year))


@pytest.mark.parametrize("text", ["text:stat:UNDELIV err:1", "Text:STAT: DELIVRD ERR:000", "text:Stat:REJECTD"])
def test_a_receipt_s_status_and_error_come_from_the_smsc_not_from_the_quoted_message_text(text: str) -> None:
    # Given an SMPP receipt (Kannel's %A) for a message that expired, whose first 20 characters (the receipt's
    # `text:` field, written by the sender) happen to contain "stat:" or "err:" words
    receipt = RECEIPT.format(dlvrd="000", stat="EXPIRED", err="027").replace("text:Hello", text)

    # When the DLR is parsed
    (report,) = provider(answer(202, "")).parse_delivery_reports(dlr(2, receipt))

    # Then the SMSC's own fields decide: expired, error 027 (not the words quoted from the message)
    assert (report.status, report.error_code) == (MessageStatus.EXPIRED, "027")


def test_the_dlr_url_we_give_kannel_comes_back_as_a_matching_report() -> None:
    # Given the DLR URL the adapter hands to Kannel
    kannel = provider(answer(202, ""))
    dlr_url = kannel.dlr_url(DLR_BASE, REF)

    # When Kannel fills in its escapes for a "delivered" report and calls it
    called = kannel_expands(dlr_url, {"d": "1", "A": "id:77 stat:DELIVRD err:000", "T": "1795309364", "i": "fake"})
    called = kannel_expands(called, {"p": "+2348020000000", "P": "48974"})
    request = callback(called)

    # Then it verifies, and finds our message by its reference
    assert kannel.verify_callback(request) is True
    (report,) = kannel.parse_delivery_reports(request)
    assert (report.client_ref, report.status) == (REF, MessageStatus.DELIVERED)


def test_dlrs_of_messages_handed_to_kannel_before_a_callback_token_rotation_are_still_verified() -> None:
    # Given a message handed to Kannel before the rotation: Kannel keeps the dlr-url it was given, old token included
    before = provider(answer(202, ""))
    dlr_url = before.dlr_url(DLR_BASE, REF)
    # When the operator rotates the callback token as docs/runbook.md says (the new one set, the old one kept in
    # previous_callback_tokens for the DLR wait)
    after = provider(
        answer(202, ""), callback_token="rotated-callback-token-9876543210", previous_callback_tokens=[TOKEN]
    )
    # And Kannel reports that message delivered on the URL it holds
    called = kannel_expands(dlr_url, {"d": "1", "A": "id:77 stat:DELIVRD err:000", "T": "1795309364", "i": "fake"})
    request = callback(kannel_expands(called, {"p": "+2348020000000", "P": "48974"}))
    # Then the report is still taken (the URL was ours, and Kannel can never be given another for that message)
    assert after.verify_callback(request) is True
    # And once the operator removes the old token (after DLR_WAIT_SECONDS), it is refused
    assert (
        provider(answer(202, ""), callback_token="rotated-callback-token-9876543210").verify_callback(request) is False
    )


@pytest.mark.parametrize("previous", ["kannel-callback-token-0123456789", ["short"], [12345678901234567890], {}])
def test_previous_callback_tokens_that_are_not_a_list_of_tokens_are_refused_at_configuration(previous: Any) -> None:
    with pytest.raises(ValueError, match="previous_callback_tokens") as raised:
        provider(answer(202, ""), previous_callback_tokens=previous)
    assert "0123456789" not in str(raised.value)  # a secret, never in the error or the logs


@pytest.mark.parametrize("query", [{}, {"type": "1"}, {"ref": REF, "type": "x"}, {"ref": REF, "type": "0"}])
def test_a_dlr_without_ref_or_a_known_type_is_rejected(query: dict[str, str]) -> None:
    request = CallbackRequest(method="GET", url=DLR_BASE, query={"token": TOKEN, **query})
    with pytest.raises(CallbackRejected):
        provider(answer(202, "")).parse_delivery_reports(request)


@pytest.mark.parametrize("token", ["", "wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x"])
def test_a_missing_or_wrong_token_is_refused(token: str) -> None:
    request = dlr(1, token=token)
    if not token:
        request = request.model_copy(update={"query": {k: v for k, v in request.query.items() if k != "token"}})
    assert provider(answer(202, "")).verify_callback(request) is False


def test_a_token_kannel_could_mangle_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="callback_token"):
        KannelProvider.from_config("kannel", {**CONFIG, "callback_token": "short%2Ftoken/with+chars"})
    with pytest.raises(ValueError, match="callback_token"):
        KannelProvider.from_config("kannel", {**CONFIG, "callback_token": "tooshort"})


@pytest.mark.parametrize("mask", [0, 1, 2, 8 | 16, 29, 256, -1])
def test_a_dlr_mask_without_the_final_reports_is_refused_at_configuration(mask: int) -> None:
    # Without delivered (1) and failed (2) no message gets a final report: each would be expired and refunded after
    # the DLR wait, delivered or not
    with pytest.raises(ValueError, match="dlr_mask"):
        KannelProvider.from_config("kannel", {**CONFIG, "dlr_mask": mask})


@pytest.mark.parametrize("mask", [3, 7, 31, 63])
def test_a_dlr_mask_with_the_final_reports_is_taken(mask: int) -> None:
    assert KannelProvider.from_config("kannel", {**CONFIG, "dlr_mask": mask})


# --- inbound (MO) -------------------------------------------------------------------------------------------------

INBOUND_BASE = "https://gw.example.com/callbacks/kannel/inbound"


def mo(query: dict[str, str], body: str = "", headers: dict[str, str] | None = None) -> CallbackRequest:
    url = f"{INBOUND_BASE}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return callback(url, method="POST", body=body, headers=headers)


def test_an_mo_from_the_documented_post_url_is_parsed() -> None:
    # As Kannel 1.4.5 posted it in our run: escapes filled in the URL, the text also in the body
    request = mo(
        {
            "token": TOKEN,
            "from": "2348020000000",
            "to": "48974",
            "ts": "1795309369",
            "id": "85497013-3d66-4db3-8caa-a021cdf74d1f",
            "coding": "0",
            "charset": "UTF-8",
            "text_hex": "48656C6C6F20776F726C642026206D6F7265",
            "text": "Hello world & more",
        },
        body="Hello world & more",
        headers={"Content-Type": 'text/plain; charset="UTF-8"', "X-Kannel-From": "2348020000000"},
    )
    kannel = provider(answer(202, ""))

    assert kannel.verify_callback(request) is True
    sms = kannel.parse_inbound(request)

    assert sms.upstream == "kannel"
    assert sms.upstream_message_id == "85497013-3d66-4db3-8caa-a021cdf74d1f"
    assert (sms.msisdn, sms.to, sms.text) == ("2348020000000", "48974", "Hello world & more")
    assert sms.received_at == "2026-11-22T01:02:49.000000Z"


def test_mo_text_comes_from_the_exact_bytes_in_any_charset() -> None:
    kannel = provider(answer(202, ""))
    base = {"token": TOKEN, "from": "2348020000000", "to": "48974", "id": "x"}
    # mo-recode turned a UCS-2 message into UTF-8 (as in our run)
    utf8 = mo({**base, "coding": "0", "charset": "UTF-8", "text_hex": "48C3A9E284A2F09F9880"})
    # without mo-recode a UCS-2 message stays UTF-16BE
    ucs2 = mo({**base, "coding": "2", "charset": "UTF-16BE", "text_hex": "Hé™😀".encode("utf-16-be").hex()})
    assert kannel.parse_inbound(utf8).text == "Hé™😀"
    assert kannel.parse_inbound(ucs2).text == "Hé™😀"


def test_mo_from_headers_and_body_alone() -> None:
    request = mo(
        {"token": TOKEN},
        body="STOP",
        headers={"X-Kannel-From": "+2348020000000", "X-Kannel-To": "48974", "Content-Type": "text/plain"},
    )
    sms = provider(answer(202, "")).parse_inbound(request)
    assert (sms.msisdn, sms.to, sms.text, sms.upstream_message_id) == ("+2348020000000", "48974", "STOP", None)


def test_an_mo_without_its_numbers_is_rejected() -> None:
    with pytest.raises(CallbackRejected):
        provider(answer(202, "")).parse_inbound(mo({"token": TOKEN, "to": "48974"}, body="hi"))


def test_the_registry_builds_it_from_its_parameter_store_configuration() -> None:
    built = FACTORIES["kannel"]("kannel-ng", dict(CONFIG))
    assert isinstance(built, KannelProvider)
    assert built.name == "kannel-ng"
    assert built.url == "http://kannel.example:13013"


# --- a real Kannel ------------------------------------------------------------------------------------------------

FAKESMSC = next(
    (p for p in ("/usr/lib/kannel/test/fakesmsc", shutil.which("fakesmsc") or "") if p and Path(p).exists()), None
)
LIVE_TOKEN = "live-kannel-token-abcdef0123456789"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


# A fake SMSC (fakesmsc connects to it); the rest of Kannel's configuration is the real-Kannel check's.
FAKE_SMSC_GROUP = """\
group = smsc
smsc = fake
smsc-id = fake
port = {port}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1
"""


@pytest.fixture
def kannel(tmp_path: Path) -> Iterator[tuple[KannelProvider, Recorder, subprocess.Popen[str]]]:
    receiver = Recorder()
    ports = {name: free_port() for name in ("admin", "smsbox", "sendsms", "fake")}
    conf = tmp_path / "kannel.conf"
    smsc_group = FAKE_SMSC_GROUP.format(port=ports["fake"])
    conf.write_text(
        KANNEL_CONF.format(
            dir=tmp_path,
            smsc_group=smsc_group,
            webhook=receiver.url,
            token=LIVE_TOKEN,
            admin=ports["admin"],
            smsbox=ports["smsbox"],
            sendsms=ports["sendsms"],
        )
    )
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, stdin: int | None = subprocess.DEVNULL, name: str = "") -> subprocess.Popen[str]:
        log = (tmp_path / f"{name or Path(args[0]).name}.out").open("w")
        process = subprocess.Popen(args, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, text=True)
        started.append(process)
        return process

    try:
        start(shutil.which("bearerbox") or "bearerbox", "-v", "1", str(conf))
        wait_for(lambda: port_open(ports["admin"]) and port_open(ports["fake"]), 15, "bearerbox")
        # Interactive fakesmsc: each line written to its stdin is an MO "<from> <to> text <message>".
        # Its log line-buffered, so a test reads the PDUs it got while it runs.
        line_buffered = ("stdbuf", "-oL", "-eL") if shutil.which("stdbuf") else ()
        fakesmsc = start(
            *line_buffered,
            FAKESMSC or "fakesmsc",
            "-H",
            "127.0.0.1",
            "-r",
            str(ports["fake"]),
            stdin=subprocess.PIPE,
            name="fakesmsc",
        )
        start(shutil.which("smsbox") or "smsbox", "-v", "1", str(conf))
        wait_for(lambda: port_open(ports["sendsms"]), 15, "smsbox")
        status = f"http://127.0.0.1:{ports['admin']}/status.txt?password=check"
        wait_for(lambda: "online" in httpx.get(status, timeout=2).text, 15, "the fake SMSC to connect")
        yield (
            KannelProvider(
                name="kannel",
                url=f"http://127.0.0.1:{ports['sendsms']}",
                username="gw",
                password="secret",
                callback_token=LIVE_TOKEN,
                max_parts=5,  # at most the sendsms-user's max-messages (10)
                client=None,
            ),
            receiver,
            fakesmsc,
        )
    finally:
        stop(started)
        receiver.close()


async def _submit(kannel: KannelProvider, request: SubmitRequest) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        kannel._client = client
        try:
            return (await kannel.submit(request)).upstream_message_id
        finally:
            kannel._client = None


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("bearerbox") is None or FAKESMSC is None, reason="Kannel (bearerbox, fakesmsc) absent")
def test_against_a_real_kannel(kannel: tuple[KannelProvider, Recorder, subprocess.Popen[str]], tmp_path: Path) -> None:
    adapter, receiver, fakesmsc = kannel
    fakesmsc_log = tmp_path / "fakesmsc.out"
    dlr_base = f"http://127.0.0.1:{receiver.port}/callbacks/kannel/dlr"

    # A UCS-2 submit through the adapter, with a validity, is accepted, and our reference is the upstream id
    request = SubmitRequest(
        client_ref=REF, sender="48974", msisdn="+2348020000000", text="Hé ™", dlr_url=dlr_base, validity_minutes=1380
    )
    assert asyncio.run(_submit(adapter, request)) == REF

    # Kannel calls the DLR URL twice: SMSC submit (8), then delivered (1) from the fake SMSC
    statuses = []
    for _ in range(2):
        recorded = receiver.next(timeout=15)
        assert recorded["method"] == "GET"
        assert recorded["path"].startswith("/callbacks/kannel/dlr?")
        dlr_request = callback_request(recorded)
        assert adapter.verify_callback(dlr_request) is True
        (report,) = adapter.parse_delivery_reports(dlr_request)
        assert report.client_ref == REF
        statuses.append(report.status)
    assert sorted(statuses) == sorted([MessageStatus.SUBMITTED, MessageStatus.DELIVERED])

    # A long UCS-2 text with an emoji on Kannel's 134-octet boundary goes whole, one sendsms, padded so Kannel cuts it
    # as it was counted: 3 PDUs with its own concatenation header, the emoji whole at the start of the second
    long_request = request.model_copy(update={"text": "я" * 66 + "😀" + "я" * 66, "client_ref": "1002"})
    assert asyncio.run(_submit(adapter, long_request)) == "1002"
    # (Kannel's reports of a message it cut: one submitted, one delivered, both the message's: it asks a receipt for
    # the first part only)
    long_reports = [adapter.parse_delivery_reports(callback_request(receiver.next(timeout=15)))[0] for _ in range(2)]
    assert {(r.client_ref, r.status) for r in long_reports} == {
        ("1002", MessageStatus.SUBMITTED),
        ("1002", MessageStatus.DELIVERED),
    }

    def pdus_got() -> list[tuple[str, str]]:
        return re.findall(r"Got message \d+: <48974 2348020000000 udh (\S+) data (\S*)>", fakesmsc_log.read_text())

    wait_for(lambda: len(pdus_got()) == 3, 15, "fakesmsc to get the 3 parts")
    ucs2_pdus = pdus_got()
    assert [udh[-6:] for udh, _ in ucs2_pdus] == ["%03%01", "%03%02", "%03%03"]
    assert [unquote_to_bytes(data.replace("+", "%20")).decode("utf-16-be") for _, data in ucs2_pdus] == [
        "я" * 66 + "\u200b",
        "😀" + "я" * 65,
        "я",
    ]
    # A GSM text with an escape pair on the 153-septet boundary goes whole, one sendsms, and Kannel cuts it as it was
    # counted: 3 PDUs with its own concatenation header, "€" whole at the start of the second
    gsm_request = request.model_copy(update={"text": "a" * 152 + "€" + "a" * 152, "client_ref": "1003"})
    assert asyncio.run(_submit(adapter, gsm_request)) == "1003"
    # (Kannel's reports of a message it cut: one submitted, one delivered, both the message's: it asks a receipt for
    # the first part only)
    gsm_reports = [adapter.parse_delivery_reports(callback_request(receiver.next(timeout=15)))[0] for _ in range(2)]
    assert {(r.client_ref, r.status) for r in gsm_reports} == {
        ("1003", MessageStatus.SUBMITTED),
        ("1003", MessageStatus.DELIVERED),
    }
    wait_for(lambda: len(pdus_got()) == 6, 15, "fakesmsc to get the 6 parts")
    pdus = pdus_got()
    assert [(udh[-6:], data[:9]) for udh, data in pdus[-3:]] == [
        ("%03%01", "a" * 9),
        ("%03%02", "%E2%82%AC"),
        ("%03%03", "a"),
    ]
    assert [len(data) for _, data in pdus[-3:]] == [152, 9 + 151, 1]

    # A forged copy of the same callback, without our token, is refused
    forged = dlr_request.model_copy(update={"query": {**dlr_request.query, "token": "guess"}})
    assert adapter.verify_callback(forged) is False

    # A wrong password is a refusal of our setup: offered to the fallback, retried without one
    wrong = KannelProvider(name="kannel", url=adapter.url, username="gw", password="nope", callback_token=LIVE_TOKEN)
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(_submit(wrong, request))
    assert (raised.value.permanent, raised.value.unavailable) == (False, True)
    assert "Authorization failed" in raised.value.message

    # An MO from the phone reaches the sms-service post-url and parses
    assert fakesmsc.stdin is not None
    fakesmsc.stdin.write("2348020000000 48974 text Hello from the phone\n")
    fakesmsc.stdin.flush()
    recorded = receiver.next(timeout=15)
    assert recorded["method"] == "POST"
    mo_request = callback_request(recorded)
    assert adapter.verify_callback(mo_request) is True
    sms = adapter.parse_inbound(mo_request)
    assert (sms.msisdn, sms.to, sms.text) == ("2348020000000", "48974", "Hello from the phone")
    assert sms.upstream_message_id


def test_a_message_over_max_parts_is_never_handed_to_kannel_to_be_cut() -> None:
    # Given a Kannel with no max_parts set (one part, as Kannel's sendsms-user max-messages default)
    seen: list[httpx.Request] = []

    def kannel(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, text="0: Accepted for delivery")

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(kannel).submit(submit_request(text="x" * 161)))
    # Then nothing is sent, and the dispatcher may offer it to the fallback (or fail and refund it: too_many_parts)
    assert seen == []
    assert (raised.value.unavailable, raised.value.error_code) == (True, "too_many_parts")
    # And an upstream whose max-messages is 10 says so in max_parts, and takes 10 parts
    text = "x" * (10 * 153)
    asyncio.run(provider(kannel, max_parts=10).submit(submit_request(text=text)))
    assert dict(parse_qsl(urlsplit(str(seen[0].url)).query))["text"] == text
    with pytest.raises(ValueError, match="max_parts"):
        provider(kannel, max_parts=0)


def test_an_smsc_reject_carries_the_smsc_s_command_status_as_its_error_code() -> None:
    # Given Kannel's report of a submit_sm the SMSC refused: type 16, %A as smsc_smpp.c builds it for
    # bb_smscconn_send_failed, "NACK/" + "0x%08lx/%s" (the submit_sm_resp command_status and its name)
    request = dlr(16, "NACK/0x0000000b/Invalid Destination Address")
    # When it is parsed
    (report,) = provider(answer(202, "")).parse_delivery_reports(request)
    # Then the message is rejected with the SMSC's reason, as a failure's error_code is (docs/delivery-reports.md:
    # "the upstream's error code for a failure"; Jasmin's level-1 reject keeps its ESME status the same way)
    assert report.status is MessageStatus.REJECTED
    assert report.error_code == "0x0000000b"


@pytest.mark.parametrize(
    ("status", "body", "permanent"),
    [(403, "Not routable. Do not try again.", True), (403, "Authorization failed for sendsms", False)],
)
def test_review_an_upstream_side_refusal_at_kannel_leaves_the_route_fallback_free_to_take_it(
    status: int, body: str, permanent: bool
) -> None:
    with pytest.raises(UpstreamError) as raised:
        asyncio.run(provider(answer(status, body)).submit(submit_request()))
    # The fallback upstream is offered the message (as for AT's 407 CouldNotRoute, Twilio's and AT's 401/403). Not
    # routable: without a fallback it fails at once (Kannel says "Do not try again"); our password: retried
    assert (raised.value.unavailable, raised.value.permanent) == (True, permanent)
    assert body in raised.value.message


def test_an_smsc_receipt_of_acceptd_leaves_the_message_submitted_for_the_next_and_delivered_if_none_comes() -> None:
    # Given an SMPP receipt whose state is ACCEPTD, which Kannel's smsc_smpp.c handle_dlr reports as buffered (type
    # 4, DLR_BUFFERED, as ENROUTE), keeping its DLR entry and fetching the SMSC's next receipt too
    receipt = RECEIPT.format(dlvrd="001", stat="ACCEPTD", err="000")
    # When Kannel's DLR of it is parsed
    (report,) = provider(answer(202, "")).parse_delivery_reports(dlr(4, receipt))
    # Then the message stays submitted for that next receipt (as through Jasmin), and is delivered if none comes
    # within the DLR wait (logic/settle.py): not delivered at once, which shut out an UNDELIV after it
    assert (report.status, report.error_code, report.settles_as) == (
        MessageStatus.SUBMITTED,
        None,
        MessageStatus.DELIVERED,
    )
    # While an ENROUTE (or bare buffered) report says only that it is on its way, nothing of how it ends
    for answer_text in (RECEIPT.format(dlvrd="000", stat="ENROUTE", err="000"), ""):
        (enroute,) = provider(answer(202, "")).parse_delivery_reports(dlr(4, answer_text))
        assert (enroute.status, enroute.settles_as) == (MessageStatus.SUBMITTED, None)
    # And an UNKNOWN, which Kannel reports as a failure (type 2, after which it drops its DLR entry), is its last word
    (unknown,) = provider(answer(202, "")).parse_delivery_reports(
        dlr(2, RECEIPT.format(dlvrd="000", stat="UNKNOWN", err="003"))
    )
    assert (unknown.status, unknown.error_code, unknown.settles_as) == (MessageStatus.FAILED, "003", None)

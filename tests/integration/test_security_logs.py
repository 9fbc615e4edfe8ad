"""No log line carries a full phone number, or a credential, anywhere in an end-to-end run at DEBUG level.

Every line is captured: the gateway's Powertools JSON (from its own handler, exactly as Lambda would print it) and
every record of every library through the root logger (botocore, httpx, Powertools' utilities), formatted with
its message, exception text and every extra attribute, as Lambda's JSON log format would. The run sends to several
numbers in each dialect, releases a scheduled batch, dispatches through two upstream protocols (Kannel's GET query
string, the simulator's JSON), takes DLRs and inbound SMS (with an opt-out), notifies the client webhook (a failure,
then a success), and walks the error paths: invalid numbers, an opted-out number, a permanent and a transient
upstream failure."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_send_path import as_lambda_sqs_event
from tests.integration.test_webhook_retries import ClientWebhook, receive
from tests.security_stack import (
    Gateway,
    configure_upstreams,
    log_in,
    populate,
    simulator_callback,
)
from tests.unit.test_log_masking import in_script

SENDER = "48974"
# (E.164, how the client wrote it): every number of the run, each in the form one dialect would get it.
KANNEL_NOW = ("+2348020000101", "+2348020000101")
BATCH = ("+2348030000102", "2348030000102")
GROUP_MEMBER = ("+2348050000103", "08050000103")
SHORTCODE_GET = ("+2348090000104", "2348090000104")
SESSION_KEY = ("+2348020000105", "08020000105")
REFUSED_UPSTREAM = ("+2348030000106", "2348030000106")
UNAVAILABLE_UPSTREAM = ("+2348050000107", "2348050000107")
REPLIER = ("+2348090000108", "2348090000108")  # sends STOP, then is sent to
# As people type numbers into a form: in groups, with spaces, dashes or dots (the separators the parser accepts).
SPACED = ("+2348020000109", "+234 802 000 0109")
DASHED = ("+2348030000110", "0803-000-0110")
DOTTED = ("+2348050000111", "0805.000.0111")
NUMBERS = [
    KANNEL_NOW,
    BATCH,
    GROUP_MEMBER,
    SHORTCODE_GET,
    SESSION_KEY,
    REFUSED_UPSTREAM,
    UNAVAILABLE_UPSTREAM,
    REPLIER,
    SPACED,
    DASHED,
    DOTTED,
]
# Not valid numbers, but a client's data all the same: refused with a reason that must not echo them whole. The
# last three are a valid number (2348020000199) typed with separators, and a stray character or a name after it.
INVALID = ["+23480200001099", "0802000011", "+234 802 000 0199 (Ada)", "0802-000-0199/", "+234.802.000.0199;"]


def forms(e164: str) -> list[str]:
    """Every way a log line could spell the number: +E.164, digits, local (0...) and national significant."""
    national = e164.removeprefix("+234")
    return [e164, e164.lstrip("+"), f"0{national}", national]


def digits_only(line: str) -> str:
    """The line with separators between digits removed: how a reader (or grep) puts a number written in groups
    ("+234 802 000 0109", "0803-000-0110", "0805.000.0111") back together."""
    return re.sub(r"(?<=\d)[\s\-./()'\"]+(?=\d)", "", line)


def number_leaks(lines: list[str], numbers: list[str]) -> list[tuple[str, str]]:
    """(number, line) for every line that carries one of the numbers whole, in whatever groups it was written."""
    wanted = {number: "".join(c for c in number if c.isdigit()) for number in numbers}
    return [(number, line[:300]) for line in lines for number, digits in wanted.items() if digits in digits_only(line)]


class EveryRecord(logging.Handler):
    """Formats a record with everything a JSON log line could carry: the message, the exception and every extra."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = {key: str(value) for key, value in vars(record).items() if key not in ("msg", "args", "exc_info")}
        fields["message"] = record.getMessage()
        if record.exc_info:
            fields["exception"] = logging.Formatter().formatException(record.exc_info)
        self.lines.append(json.dumps(fields))


@contextmanager
def every_log_line(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The lines logged inside the block, at DEBUG, available once it ends."""
    from sms_gateway.observability import logger

    # An operator turning on Powertools' event logging must not put requests (numbers, passwords) in the logs.
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    root = logging.getLogger()
    everything = EveryRecord()
    powertools_output = io.StringIO()
    handler = logger.registered_handler
    previous_stream, previous_level, previous_root_level = handler.stream, logger.log_level, root.level
    handler.setStream(powertools_output)
    logger.setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.addHandler(everything)
    lines: list[str] = []
    try:
        yield lines
    finally:
        root.removeHandler(everything)
        root.setLevel(previous_root_level)
        logger.setLevel(previous_level)
        handler.setStream(previous_stream)
        lines.extend(powertools_output.getvalue().splitlines())
        lines.extend(everything.lines)


class Upstreams:
    """Kannel and the simulator behind httpx.MockTransport: one number refused for good, one always unavailable."""

    def __init__(self) -> None:
        self.kannel_submits: list[dict[str, str]] = []
        self.simulator_submits: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "kannel.test":
            query = dict(parse_qsl(request.url.query.decode()))
            self.kannel_submits.append(query)
            return self._answer(query["to"], httpx.Response(202, text="0: Accepted for delivery"))
        payload = json.loads(request.content)
        self.simulator_submits.append(payload)
        message_id = f"sim-{len(self.simulator_submits)}"
        return self._answer(payload["to"], httpx.Response(200, json={"message_id": message_id, "status": "accepted"}))

    @staticmethod
    def _answer(to: str, accepted: httpx.Response) -> httpx.Response:
        # Real SMSCs echo the number in their refusals ("Number(s) 234... has/have been denied by ... lists").
        if f"+{to}" == REFUSED_UPSTREAM[0]:
            return httpx.Response(400, text=f"Number(s) {to} has/have been denied by white- and/or black-lists.")
        if f"+{to}" == UNAVAILABLE_UPSTREAM[0]:
            return httpx.Response(503, text=f"SMSC down, {to} queued nowhere")
        return accepted


def _dispatch(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, upstream: str) -> None:
    """One pass of the dispatcher over everything queued, with `upstream` as the default upstream."""
    from sms_gateway import bootstrap

    monkeypatch.setenv("DEFAULT_UPSTREAM", upstream)
    bootstrap.reset()
    from tests.integration.test_send_path import queued_records

    records = queued_records(env)
    if records:
        load_function("dispatcher").handler(as_lambda_sqs_event(records), FakeContext())


def _notify(env: dict[str, str]) -> None:
    from sms_gateway_tools.localstack.sqs_poller import lambda_record

    messages = receive(env["NOTIFY_QUEUE_URL"])
    if messages:
        records = [lambda_record(m, "arn:aws:sqs:us-east-1:123456789012:notify") for m in messages]
        load_function("notifier").handler({"Records": records}, FakeContext())


def _ok(answer: Any, status: int = 200) -> Any:
    assert answer.status == status, answer
    return answer.json


def _end_to_end_run(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, upstreams: Upstreams) -> dict[str, Any]:
    """Everything a day of traffic does, through the real handlers; returns the secrets that went past."""
    from sms_gateway import consumers
    from sms_gateway.adapters import http
    from sms_gateway_tools.admin import set_webhooks

    configurations = configure_upstreams(aws, simulator_url="http://simulator.test", kannel_url="http://kannel.test")
    monkeypatch.setattr(
        http._local, "client", httpx.AsyncClient(transport=httpx.MockTransport(upstreams)), raising=False
    )
    # The client's webhook fails once, then takes everything.
    monkeypatch.setattr(consumers, "post_webhook", ClientWebhook(500))
    monkeypatch.setenv("NOTIFY_RETRY_DELAYS", "0")
    gateway = Gateway.start()
    tenant = populate(gateway, "Logged", SENDER, KANNEL_NOW[1])
    account = tenant.account
    set_webhooks(
        account_id=account["account_id"], dlr_url="https://client.example/dlr", inbound_url="https://client.example/in"
    )
    bearer = tenant.bearer

    # 9bits: one number, a list, a group, an invalid number, with delivery reports asked for
    _ok(
        gateway.request(
            "POST",
            "/ng/v1/sendsms",
            headers=bearer,
            body={"from": SENDER, "to": KANNEL_NOW[1], "message": "hi", "delivery_report": "yes"},
        )
    )
    group = _ok(
        gateway.request("POST", "/ng/v1/groups", headers=bearer, body={"name": "Club", "members": [GROUP_MEMBER[1]]}),
        201,
    )
    written_in_groups = [SPACED[1], DASHED[1], DOTTED[1]]
    batch = {
        "from": SENDER,
        "to": [BATCH[1], group["group_id"], REFUSED_UPSTREAM[1], UNAVAILABLE_UPSTREAM[1], *written_in_groups],
        "body": "batch",
        "delivery_report": "yes",
    }
    _ok(gateway.request("POST", "/ng/v1/sendsms", headers=bearer, body=batch))
    for invalid in INVALID:
        refused = gateway.request(
            "POST", "/ng/v1/sendsms", headers=bearer, body={"from": SENDER, "to": [BATCH[1], invalid], "body": "x"}
        )
        assert refused.status == 400, refused
    _ok(
        gateway.request(
            "POST",
            "/ng/v1/batches/dry_run",
            headers=bearer,
            body={"from": SENDER, "to": [BATCH[1], INVALID[0]], "body": "x"},
        )
    )
    # Shortcode: the numbers ride in the GET query string; getdlr; an invalid number in a POST
    credentials = {"apikey": account["apikey"], "partnerID": account["partner_id"]}
    sent = _ok(
        gateway.request(
            "GET",
            "/api/services/sendsms",
            query={**credentials, "message": "sc", "shortcode": SENDER, "mobile": SHORTCODE_GET[1]},
        )
    )
    _ok(
        gateway.request(
            "GET", "/api/services/getdlr", query={**credentials, "messageID": str(sent["responses"][0]["messageid"])}
        )
    )
    _ok(
        gateway.request(
            "POST",
            "/api/services/sendsms",
            body={**credentials, "message": "sc", "shortcode": SENDER, "mobile": INVALID[1]},
        )
    )
    # Session key: a wrong login, a send, an invalid recipient
    assert gateway.request("GET", "/login", query={"username": account["username"], "password": "wrong"}).status == 401
    session = log_in(gateway, account)
    order = {"message": "sk", "message_type": "N", "sender": SENDER}
    for recipient, status in ((SESSION_KEY[1], 201), (INVALID[0], 400)):
        sent = gateway.request("POST", "/sms", headers=session, body={**order, "recipient": [recipient]})
        assert sent.status == status, sent

    # The scheduled batch is released early, as its one-time schedule would release it
    release = {"account_id": account["account_id"], "reference_id": int(tenant.scheduled_reference_id)}
    assert load_function("scheduled_dispatch").handler(release, FakeContext()) == {"released": True}
    # Dispatch: the first pass through Kannel (GET query strings), what is left through the simulator (JSON)
    _dispatch(aws, monkeypatch, "kannel")
    _dispatch(aws, monkeypatch, "simulator")
    assert upstreams.kannel_submits, "nothing went through Kannel"

    # DLRs: Kannel's GET callback (the number is in its query string), the simulator's signed JSON
    for submit in upstreams.kannel_submits:
        url = urlsplit(
            submit["dlr-url"].replace("%d", "1").replace("%A", "id:1 stat:DELIVRD err:000").replace("%p", submit["to"])
        )
        query = {k: v for k, v in parse_qsl(url.query) if "%" not in v}
        gateway.request("GET", url.path, query=query)
    for submit in upstreams.simulator_submits:
        if submit["dlr_url"]:
            report = {
                "message_id": "sim-1",
                "client_ref": submit["client_ref"],
                "to": submit["to"],
                "status": "DELIVRD",
            }
            simulator_callback(gateway, "dlr", {**report, "error_code": "000", "done_at": "2026-01-01T00:00:01Z"})
    # Inbound: a reply, a STOP, then a send to the opted-out number; and an inbound for nobody's shortcode
    for text, to in (("hello back", SENDER), ("STOP", SENDER), ("who is this", "99999")):
        inbound = {"message_id": f"sim-in-{text}", "from": REPLIER[1], "to": to, "text": text}
        simulator_callback(gateway, "inbound", {**inbound, "received_at": "2026-01-01T00:00:00Z"})
    opted_out = gateway.request(
        "POST", "/ng/v1/sendsms", headers=bearer, body={"from": SENDER, "to": [REPLIER[1]], "body": "x"}
    )
    assert opted_out.status == 400, opted_out
    _ok(gateway.request("GET", "/ng/v1/inbounds", headers=bearer, query={"number": REPLIER[1]}))
    # Notifications: every DLR and inbound to the client's webhook, the first failing and retried
    for _ in range(3):
        _notify(aws)
    return {
        "client": [account["token"], account["apikey"], account["password"], session["Session_key"]],
        "upstream": [
            configurations["kannel"]["password"],
            configurations["kannel"]["callback_token"],
            configurations["simulator"]["secret"],
        ],
    }


def test_no_log_line_of_an_end_to_end_run_carries_a_full_number_or_a_secret(aws, monkeypatch):
    upstreams = Upstreams()
    with every_log_line(monkeypatch) as lines:
        secrets = _end_to_end_run(aws, monkeypatch, upstreams)
    # The capture really saw the run: our own lines, and the libraries' DEBUG lines
    assert any('"dispatch record processed"' in line for line in lines)
    assert any("botocore" in line or "httpx" in line for line in lines)
    assert len(lines) > 100
    leaks = [
        (form, line[:300])
        for e164, _ in NUMBERS
        for form in forms(e164)
        for line in lines
        if re.search(rf"(?<!\d){re.escape(form)}(?!\d)", line)
    ]
    # A number written in groups is found however the line spells it: its digits, put back together
    leaks += number_leaks(lines, [e164.removeprefix("+234") for e164, _ in NUMBERS])
    leaks += number_leaks(lines, INVALID)
    leaks += [
        ("secret", line[:300]) for secret in secrets["client"] + secrets["upstream"] for line in lines if secret in line
    ]
    assert leaks == []


def test_a_refused_number_written_with_separators_is_not_logged_whole(aws, monkeypatch):
    # Given an account, and a valid number as a person types it: in groups, with a stray character or a name after it
    configure_upstreams(aws)
    gateway = Gateway.start()
    tenant = populate(gateway, "Typist", SENDER)
    typed = INVALID[-3:]
    # When the client sends to each, and the gateway refuses it (quoting it back, so the client sees which entry)
    with every_log_line(monkeypatch) as lines:
        for number in typed:
            answer = gateway.request(
                "POST", "/ng/v1/sendsms", headers=tenant.bearer, body={"from": SENDER, "to": [number], "body": "x"}
            )
            assert answer.status == 400, answer
            assert number in answer.json["message"], answer
    # Then no log line carries the number whole, in any grouping (the "request refused" line included)
    assert any('"request refused"' in line for line in lines)
    assert number_leaks(lines, [*typed, "8020000199"]) == []


# A number as an Arabic or Persian keyboard types it: Arabic-Indic digits (U+0660...), Extended Arabic-Indic (U+06F0...)
ARABIC_INDIC = in_script("08020000199", "\u0660")
PERSIAN = in_script("+2348020000199", "\u06f0")


def test_a_sender_typed_in_arabic_indic_digits_is_refused_and_not_logged_whole(aws, monkeypatch):
    # Given an account, and a client whose keyboard writes digits in Arabic-Indic or Persian script
    configure_upstreams(aws)
    gateway = Gateway.start()
    tenant = populate(gateway, "Farsi", SENDER)
    # When it sends from a sender typed that way (not one of its senders), with the logs at the level Lambda runs
    with every_log_line(monkeypatch) as lines:
        answers = [
            gateway.request(
                "POST",
                "/ng/v1/sendsms",
                headers=tenant.bearer,
                body={"from": typed, "to": ["2348020000199"], "body": "x"},
            )
            for typed in (ARABIC_INDIC, PERSIAN)
        ]
    # Then each is refused in the dialect's shape, as any unregistered sender is, not a crash of the function
    for answer, typed in zip(answers, (ARABIC_INDIC, PERSIAN), strict=True):
        assert answer.status == 400, answer
        assert "is not registered" in answer.json["message"] and typed in answer.json["message"], answer
    # And the "request refused" line that says so does not carry the number whole
    assert any('"request refused"' in line for line in lines)
    assert [line for line in lines if ARABIC_INDIC in line or PERSIAN.lstrip("+") in line] == []

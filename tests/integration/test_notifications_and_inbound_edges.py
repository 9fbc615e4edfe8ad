"""Client notifications and inbound SMS at their edges: national-form senders, stale error codes, resend-all's
"more", unreadable Retry-After answers, failure records kept 30 days after their last change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_callback_acknowledgements import kannel_inbound_event
from tests.integration.test_operations_metrics import simulator_dlr
from tests.integration.test_settle_checks import message_now, stranded_message
from tests.integration.test_webhook_retries import ClientWebhook, notification, run_notifier

KANNEL_TOKEN = "a-callback-token-0123456789"


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(
        name="Cinema Club",
        senders=["48974"],
        credits=100,
        dlr_url="https://client.example/dlr",
        inbound_url="https://client.example/inbound",
    )


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> ClientWebhook:
    from sms_gateway import consumers

    recorder = ClientWebhook()
    monkeypatch.setattr(consumers, "post_webhook", recorder)
    return recorder


def kannel_mo(sender: str, text: str, mo_id: str) -> dict[str, Any]:
    """Kannel's MO post as docs/providers-smsc.md configures it (from=%p, to=%P, id=%I, text_hex=%e)."""
    query = {
        "token": KANNEL_TOKEN,
        "from": sender,
        "to": "48974",
        "ts": "1767398400",
        "id": mo_id,
        "coding": "0",
        "charset": "UTF-8",
        "text_hex": text.encode().hex(),
    }
    return kannel_inbound_event(query, "text/plain; charset=UTF-8", text, encoded=False)


# ---------------------------------------------------------------- finding 1: national-form MO sender refused


def test_a_stop_from_a_handset_the_smsc_names_in_national_form_is_stored_forwarded_and_honoured(aws, account):
    # Given Kannel set up as docs/providers-smsc.md says, behind an SMSC that gives the MO's source address in the
    # national form (TON national: 08020000000), as many do unless Kannel's unified-prefix rewrites it
    from tests.integration.test_callback_acknowledgements import configure

    configure(
        aws,
        "kannel",
        {
            "type": "kannel",
            "url": "http://127.0.0.1:13013",
            "username": "u",
            "password": "p",
            "callback_token": KANNEL_TOKEN,
        },
    )
    # When the handset texts STOP to the account's shortcode
    answer = load_function("webhook").handler(
        kannel_mo("08020000000", "STOP", "7e3b2f1a-0000-4000-8000-0000000000b1"), FakeContext()
    )
    # Then the SMS is taken (the account, found by its shortcode, is a Nigerian one: default country NG) ...
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.msisdn == "+2348020000000"
    # ... and the number is opted out of 48974
    assert gateway().store.opted_out(account["account_id"], "48974", ["+2348020000000"])


# ---------------------------------------------------------------- finding 3: delivered DLR carries an error code


def test_a_delivered_report_after_an_unconfirmed_submit_carries_no_error_code(aws, account, hook):
    # Given a message a dead dispatcher left submitted-unconfirmed (error_code submit_unconfirmed), which the
    # upstream did have after all
    message = stranded_message(aws, account)
    assert (message.status, message.error_code) == ("submitted", "submit_unconfirmed")
    # When its DLR says delivered (no error code: a success)
    dlr = simulator_dlr(aws, message.key.to_ref(), "DELIVRD", "2026-01-02T23:50:40Z")
    assert load_function("webhook").handler(dlr, FakeContext())["statusCode"] == 200
    run_notifier(aws)  # the submit's and the delivery's notifications (the settle check waits hidden)
    # Then the client's delivery report says delivered, with the success code (null or 000), not our code for
    # a dispatcher that died mid-submit
    [delivered] = [p["body"] for p in hook.posts if p["body"]["status"] == "delivered"]
    assert delivered["error_code"] in (None, "000"), delivered
    assert message_now(message).error_code in (None, "000")


# ---------------------------------------------------------------- finding 2: resend-all says nothing more is dead


def test_resend_all_says_more_are_left_when_dead_ones_lie_behind_ten_that_are_not_dead(aws, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import webhook_retries
    from sms_gateway.logic.notify import WebhookFailed

    store, account_id = gateway().store, account["account_id"]
    start = datetime(2026, 1, 2, tzinfo=UTC)

    def failed(n: int, *, dead: bool) -> None:
        webhook_retries.record_failure(
            store,
            notification(account_id, n),
            WebhookFailed("client webhook answered 502", status_code=502),
            attempt=1,
            delays=() if dead else (60,),
            now=start + timedelta(minutes=n),
        )

    # Given, newest first: two dead notifications, then ten still retrying (or delivered), then one more dead one
    failed(0, dead=True)
    for n in range(1, 11):
        failed(n, dead=False)
    failed(11, dead=True)
    failed(12, dead=True)
    # When the client resends dead ones, two per call (the API's RESEND_ALL_LIMIT is 500: the same code path)
    resent, more = webhook_retries.resend_dead(store, gateway().notify_queue, account_id, now=start, limit=2)
    # Then two were resent, and the answer says more are left: dlr_0_3 is still dead
    assert resent == 2
    assert store.get_webhook_failure(account_id, "dlr_0_3").state == "dead"
    assert more is True, "`more` is false while a dead notification is left: a client following the docs stops here"


# ---------------------------------------------------------------- finding 4: Retry-After "Infinity" / "nan"


@pytest.mark.parametrize("retry_after", ["Infinity", "1e999", "nan"])
def test_a_client_answering_503_with_a_non_finite_retry_after_gets_the_retry_schedule(
    aws, account, monkeypatch, retry_after
):
    import httpx

    from sms_gateway.adapters import webhook_http
    from tests.integration.test_webhook_retries import publish, queue_counts, record_of

    # Given a client webhook (reached through the real post_webhook) answering 503 with an odd Retry-After
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": retry_after}, json={"error": "busy"})

    monkeypatch.setattr(
        webhook_http, "webhook_client", lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer))
    )
    account_id = account["account_id"]
    publish(notification(account_id))
    # When the notifier's first attempt fails
    result = run_notifier(aws)
    assert result["failed"] == 1
    # Then it is handled like any failed delivery: recorded as retrying (listed, resendable once dead), the record
    # hidden until its next attempt (at most 12 h), rather than the handler crashing on float('inf')
    record = record_of(account_id, "dlr_1_3")
    assert record is not None and record.state == "retrying", "no failure record: the notifier crashed"
    assert queue_counts(aws["NOTIFY_QUEUE_URL"]) == (0, 1)


# ---------------------------------------------------------------- finding 5: failure records and their TTLs

DAY = 86_400


def _expiries(store: Any, account_id: str, notification_id: str) -> tuple[int, int]:
    """(the failure record's expires_at, its listing pointer's expires_at)."""
    record = store.client.get_item(
        TableName=store.table_name,
        Key={"pk": {"S": f"NOTIFY#{account_id}"}, "sk": {"S": f"FAIL#{notification_id}"}},
        ConsistentRead=True,
    )["Item"]
    [pointer] = store.client.query(
        TableName=store.table_name,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": {"S": f"NOTIFY#{account_id}"}, ":prefix": {"S": "FAILAT#"}},
    )["Items"]
    return int(record["expires_at"]["N"]), int(pointer["expires_at"]["N"])


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def _dead_then_resent_on_day_29(monkeypatch: pytest.MonkeyPatch, account_id: str) -> tuple[Any, _Clock, datetime]:
    from sms_gateway.adapters import dynamodb_notifications
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import webhook_retries
    from sms_gateway.logic.notify import WebhookFailed

    store = gateway().store
    clock = _Clock(1_767_312_000.0)  # 2026-01-02
    monkeypatch.setattr(dynamodb_notifications, "time", clock)
    start = datetime.fromtimestamp(clock.now, UTC)
    # Day 0: a notification fails its (only) attempt and is dead
    webhook_retries.record_failure(
        store,
        notification(account_id),
        WebhookFailed("client webhook answered 502", status_code=502),
        attempt=1,
        delays=(),
        now=start,
    )
    # Day 29: the client resends it
    clock.now += 29 * DAY
    webhook_retries.resend_failure(store, gateway().notify_queue, account_id, "dlr_1_3", now=start + timedelta(days=29))
    return store, clock, start


def test_a_resend_keeps_the_failure_record_for_30_days_after_it(aws, account, monkeypatch):
    store, clock, _ = _dead_then_resent_on_day_29(monkeypatch, account["account_id"])
    record_expires, _ = _expiries(store, account["account_id"], "dlr_1_3")
    # docs/webhooks.md: "kept for 30 days after its last change" -- the resend is one
    assert record_expires >= clock.now + 30 * DAY - 60, (
        f"the resent record expires {(record_expires - clock.now) / DAY:.1f} days after the resend"
    )


def test_a_notification_dead_again_after_a_resend_stays_listed_as_long_as_its_record_lives(aws, account, monkeypatch):
    from sms_gateway.logic import webhook_retries
    from sms_gateway.logic.notify import WebhookFailed

    store, _clock, start = _dead_then_resent_on_day_29(monkeypatch, account["account_id"])
    # The resent notification fails again (day 29) and is dead again
    webhook_retries.record_failure(
        store,
        {**notification(account["account_id"]), "resent": True},
        WebhookFailed("client webhook answered 502", status_code=502),
        attempt=1,
        delays=(),
        now=start + timedelta(days=29),
    )
    record_expires, pointer_expires = _expiries(store, account["account_id"], "dlr_1_3")
    # Then its listing pointer lives as long as the record: otherwise from day 30 to day 59 the dead notification
    # is neither listed (GET /ng/v1/webhooks/failures?state=dead) nor found by resend-all
    assert pointer_expires >= record_expires, (
        f"pointer expires on day {(pointer_expires - start.timestamp()) / DAY:.0f}, "
        f"record on day {(record_expires - start.timestamp()) / DAY:.0f}"
    )

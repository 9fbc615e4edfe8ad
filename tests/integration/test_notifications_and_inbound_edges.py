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


def configure_kannel(aws: dict[str, str]) -> None:
    """Kannel set up as docs/providers-smsc.md says, its MO posts carrying KANNEL_TOKEN."""
    from tests.integration.test_callback_acknowledgements import configure

    config = {"type": "kannel", "url": "http://127.0.0.1:13013", "username": "u", "password": "p"}
    configure(aws, "kannel", {**config, "callback_token": KANNEL_TOKEN})


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
    configure_kannel(aws)
    # ... and taking the shortcode's inbound SMS (Kannel carries only these: no route names it)
    from sms_gateway_tools.admin import set_sender

    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["kannel"])
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


# ---------------------------------------------------------------- inbound only from the upstreams bound to the number


@pytest.fixture
def two_upstreams(aws: dict[str, str]) -> None:
    """The simulator (the default upstream: the one the account's routes name) and Kannel (say, a box shared with a
    partner), both configured with credentials their callbacks pass."""
    import boto3

    from sms_gateway_tools.localstack.resources import put_simulator_parameter
    from tests.integration.test_optouts import SECRET

    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SECRET)
    configure_kannel(aws)


def simulator_mo(text: str, message_id: str) -> dict[str, Any]:
    from tests.integration.test_optouts import inbound_event

    return inbound_event(text, message_id, msisdn="2348020000000", to="48974")


def test_a_stopall_from_an_upstream_the_number_is_not_bound_to_is_acknowledged_and_changes_nothing(
    aws, account, two_upstreams, caplog
):
    # Given account 48974, whose routes name only the simulator, and Kannel, whose credentials are valid
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_optouts import stored_opt_outs

    webhook = load_function("webhook")
    # When Kannel posts a STOPALL from a handset to 48974
    answer = webhook.handler(
        kannel_mo("+2348020000000", "STOPALL", "7e3b2f1a-0000-4000-8000-0000000000c1"), FakeContext()
    )
    # Then it is acknowledged (Kannel stops retrying it), as an SMS to a number no account owns is
    assert answer["statusCode"] == 200, answer
    # ... but nothing is stored, forwarded or opted out
    assert gateway().store.list_inbounds(account["account_id"])[0] == []
    assert stored_opt_outs(account["account_id"]) == []
    assert queued_notifications(aws) == []
    # ... and the operator is told which upstream, without the whole number
    [warning] = [r for r in caplog.records if "not allowed to deliver" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert (warning.upstream, warning.to, warning.allowed) == ("kannel", "48974", ["simulator"])
    assert not any("2348020000000" in str(value) for r in caplog.records for value in vars(r).values())
    # When the simulator, the upstream the number's routes name, posts the same STOPALL
    answer = webhook.handler(simulator_mo("STOPALL", "sim-stopall-1"), FakeContext())
    # Then it is stored, forwarded and applied
    assert answer["statusCode"] == 200, answer
    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert (stored.upstream, stored.text) == ("simulator", "STOPALL")
    assert [n["kind"] for n in queued_notifications(aws)] == ["inbound"]
    assert stored_opt_outs(account["account_id"]) != []


def test_an_inbound_only_upstream_named_in_the_numbers_setting_is_taken_and_only_the_upstreams_named(
    aws, account, two_upstreams
):
    # Given 48974 set to take its inbound SMS from Kannel only (an upstream no route names: it carries only MO)
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import set_sender

    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["kannel"])
    webhook = load_function("webhook")
    # When Kannel posts an SMS to it
    answer = webhook.handler(
        kannel_mo("+2348020000000", "Yes please", "7e3b2f1a-0000-4000-8000-0000000000c2"), FakeContext()
    )
    # Then it is stored
    assert answer["statusCode"] == 200, answer
    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert (stored.upstream, stored.text) == ("kannel", "Yes please")
    # When the simulator, which the routes name but the setting does not, posts one
    assert webhook.handler(simulator_mo("STOP", "sim-stop-9"), FakeContext())["statusCode"] == 200
    # Then it is not taken: the setting is the whole list
    assert len(gateway().store.list_inbounds(account["account_id"])[0]) == 1
    assert not gateway().store.opted_out(account["account_id"], "48974", ["+2348020000000"])
    # When the operator puts the number back on its routes' upstreams, the simulator's is taken again
    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=[])
    assert webhook.handler(simulator_mo("STOP", "sim-stop-10"), FakeContext())["statusCode"] == 200
    assert gateway().store.opted_out(account["account_id"], "48974", ["+2348020000000"])


def test_an_upstream_of_another_accounts_route_may_not_deliver_this_accounts_inbound(aws, account, two_upstreams):
    # Given another account whose own route sends through Kannel, and this account with no route of its own
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import create_account, set_route

    other = create_account(name="Partner", senders=["55555"], credits=0)
    set_route(upstream="kannel", account_id=other["account_id"])
    webhook = load_function("webhook")
    # When Kannel posts an SMS to each account's number
    to_this = kannel_mo("+2348020000000", "hello", "7e3b2f1a-0000-4000-8000-0000000000c3")
    to_other = kannel_mo("+2348020000000", "hello", "7e3b2f1a-0000-4000-8000-0000000000c4")
    to_other["queryStringParameters"]["to"] = "55555"
    to_other["rawQueryString"] = to_other["rawQueryString"].replace("to=48974", "to=55555")
    assert webhook.handler(to_this, FakeContext())["statusCode"] == 200
    assert webhook.handler(to_other, FakeContext())["statusCode"] == 200
    # Then the other account's is taken (its route names Kannel) and this account's is not
    assert len(gateway().store.list_inbounds(other["account_id"])[0]) == 1
    assert gateway().store.list_inbounds(account["account_id"])[0] == []


def test_routing_sends_around_a_failing_upstream_keeps_the_stops_that_upstream_still_delivers(
    aws, account, two_upstreams
):
    # Given an account whose own route sends through Kannel, the box that also delivers its shortcode's MO (so the
    # number follows its routes: nobody had a reason to set an inbound list), and a STOP it delivered, taken
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import set_route

    set_route(upstream="kannel", account_id=account["account_id"])
    webhook = load_function("webhook")
    first = kannel_mo("+2348020000000", "Yes please", "7e3b2f1a-0000-4000-8000-0000000000d1")
    assert webhook.handler(first, FakeContext())["statusCode"] == 200
    assert len(gateway().store.list_inbounds(account["account_id"])[0]) == 1
    # When Kannel's submits fail and the operator does what docs/runbook.md says for UpstreamFailureRateAlarm,
    # "route around it (sms-gateway admin set-route ... --upstream OTHER)": the account's sends go out through the
    # simulator now, while Kannel's SMSC link still carries the shortcode's MO
    set_route(upstream="simulator", account_id=account["account_id"])
    gateway().settings_cache.clear()  # the route table's 30 s cache, run out
    stop = kannel_mo("+2348020000000", "STOP", "7e3b2f1a-0000-4000-8000-0000000000d2")
    assert webhook.handler(stop, FakeContext())["statusCode"] == 200
    # Then the subscriber's STOP is still taken and honoured (Kannel was acknowledged: it will never post it again)
    assert len(gateway().store.list_inbounds(account["account_id"])[0]) == 2
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


# ---------------------------------------------------------------- an inbound SMS its callback did not queue


def refusing_notify_queue(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The notify queue refuses the next `times` publishes (SQS unavailable past botocore's retries)."""
    from sms_gateway.bootstrap import gateway

    # Both of the queue's clients: the webhook function publishes through the prompt one.
    queues = [gateway().notify_queue, gateway().prompt_notify_queue]
    publishes, left = [queue.publish for queue in queues], [times]

    def refused(notifications: Any) -> None:
        left[0] -= 1
        if left[0] <= 0:
            for queue, publish in zip(queues, publishes, strict=True):
                monkeypatch.setattr(queue, "publish", publish)
        raise RuntimeError("SQS unavailable")

    for queue in queues:
        monkeypatch.setattr(queue, "publish", refused)


def signed_inbound(text: str, message_id: str) -> dict[str, Any]:
    import boto3

    from sms_gateway_tools.localstack.resources import put_simulator_parameter
    from tests.integration.test_optouts import SECRET, inbound_event

    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SECRET)
    return inbound_event(text, message_id)


def sweeper_runs(monkeypatch: pytest.MonkeyPatch, minutes_after_now: float) -> dict[str, Any]:
    """One scheduled run of the sweeper, `minutes_after_now` from the real clock."""
    from sms_gateway import sweeps
    from sms_gateway.domain.models import utc_now

    monkeypatch.setattr(sweeps, "utc_now", lambda: utc_now() + timedelta(minutes=minutes_after_now))
    return load_function("sweeper").handler({"detail-type": "Scheduled Event", "detail": {}}, FakeContext())


def queued_notifications(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every notification on the notify queue (each taken once: moto hides it for the visibility timeout)."""
    import json

    import boto3

    found: list[dict[str, Any]] = []
    while True:
        answer = boto3.client("sqs").receive_message(QueueUrl=env["NOTIFY_QUEUE_URL"], MaxNumberOfMessages=10)
        if not answer.get("Messages"):
            return found
        found.extend(json.loads(message["Body"]) for message in answer["Messages"])


def raw_inbound(account_id: str) -> dict[str, Any]:
    """The account's one inbound SMS as stored, with the attributes the adapter adds (its mark, if any)."""
    from sms_gateway.adapters.dynamodb_inbox import inbound_sk, inbox_pk
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    [stored] = store.list_inbounds(account_id)[0]

    item = store.client.get_item(
        TableName=store.table_name,
        Key={"pk": {"S": inbox_pk(account_id)}, "sk": {"S": inbound_sk(stored.inbound_id)}},
        ConsistentRead=True,
    )["Item"]
    return dict(store._codec.load(item))


def test_an_inbound_sms_whose_notification_the_queue_refused_reaches_the_client_from_the_sweeper(
    aws, account, monkeypatch
):
    # Given an inbound SMS whose notification the notify queue refuses, through an upstream that never posts a
    # failed callback again (Twilio; Kannel by default)
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(signed_inbound("Two tickets please", "sim-unqueued"), FakeContext())
    # Then the SMS is stored (the inbox has it), marked as not queued, and nothing is queued
    stored = raw_inbound(account["account_id"])
    assert stored["text"] == "Two tickets please" and "sweep_at" in stored
    assert queued_notifications(aws) == []
    # When the sweeper runs before the SMS is due (its callback could still be running), it queues nothing
    assert sweeper_runs(monkeypatch, 1) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}
    assert queued_notifications(aws) == []
    # And when it runs after, it queues the SMS's notification once, under the SMS's own webhook id
    assert sweeper_runs(monkeypatch, 3) == {"inbound_queued": 1, "reports_queued": 0, "batches_released": 0}
    [queued] = queued_notifications(aws)
    assert queued["id"] == f"in_{stored['inbound_id']}"
    assert queued["payload"]["message"] == "Two tickets please"
    # And clears the mark: a second run queues nothing again
    assert "sweep_at" not in raw_inbound(account["account_id"])
    assert sweeper_runs(monkeypatch, 10) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}
    assert queued_notifications(aws) == []


def test_a_sweeper_run_out_of_time_does_not_retry_a_publish_the_notify_queue_leaves_unanswered(
    aws, account, monkeypatch
):
    from botocore.exceptions import ReadTimeoutError

    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.sweep import SweepIncomplete
    from tests.conftest import ShortOfTime

    # Given an inbound SMS its callback could not queue
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(signed_inbound("Table for two", "sim-late-sweep"), FakeContext())
    # And a notify queue that no longer answers (botocore's back-off sleeps skipped)
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)
    sqs, sent = gateway().notify_queue.client, []

    def no_answer(request: Any, **_: Any) -> None:
        sent.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    sqs.meta.events.register_first("before-send.sqs.SendMessageBatch", no_answer)
    try:
        # When the sweeper runs with less than its reserve left (its first page is taken however late it is)
        from sms_gateway import sweeps

        monkeypatch.setattr(sweeps, "utc_now", lambda: datetime.now(UTC) + timedelta(minutes=3))
        with pytest.raises(SweepIncomplete):
            load_function("sweeper").handler({"detail-type": "Scheduled Event", "detail": {}}, ShortOfTime(10_000))
    finally:
        sqs.meta.events.unregister("before-send.sqs.SendMessageBatch", no_answer)
    # Then the publish was tried once, not five times with back-offs (about a minute: the function's whole Timeout)
    assert len(sent) == 1
    # And the SMS stays marked for a run after its claim
    assert "sweep_at" in raw_inbound(account["account_id"])
    assert sweeper_runs(monkeypatch, 9) == {"inbound_queued": 1, "reports_queued": 0, "batches_released": 0}


def test_a_sweeper_run_out_of_time_passes_over_an_item_the_index_still_lists_after_it_was_cleared(
    aws, account, monkeypatch
):
    from sms_gateway.adapters.dynamodb_inbox import inbound_sk, inbox_pk
    from sms_gateway.adapters.dynamodb_sweep import UNMARK
    from sms_gateway.bootstrap import gateway
    from tests.conftest import ShortOfTime

    # Given an inbound SMS its callback could not queue
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(signed_inbound("Table for two", "sim-stale-index"), FakeContext())
    store = gateway().store
    stored = raw_inbound(account["account_id"])
    key = {"pk": {"S": inbox_pk(account["account_id"])}, "sk": {"S": inbound_sk(stored["inbound_id"])}}

    # And whose mark is cleared (a callback retry queued it) after the eventually consistent index listed it
    def cleared_after_listing(parsed: dict[str, Any], **_: Any) -> None:
        if not parsed.get("Items"):
            return
        store.client.meta.events.unregister("after-call.dynamodb.Query", cleared_after_listing)
        store.client.update_item(TableName=store.table_name, Key=key, UpdateExpression=f"REMOVE {UNMARK}")

    store.client.meta.events.register("after-call.dynamodb.Query", cleared_after_listing)
    try:
        # When the sweeper runs with less than its reserve left (its first page is taken however late it is)
        from sms_gateway import sweeps

        monkeypatch.setattr(sweeps, "utc_now", lambda: datetime.now(UTC) + timedelta(minutes=3))
        answer = load_function("sweeper").handler({"detail-type": "Scheduled Event", "detail": {}}, ShortOfTime(10_000))
    finally:
        store.client.meta.events.unregister("after-call.dynamodb.Query", cleared_after_listing)
    # Then the cleared SMS is passed over, as it is with time left, and the run succeeds
    assert answer == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}


def test_an_inbound_sms_queued_by_its_callback_costs_one_write_more_and_is_never_swept(aws, account, monkeypatch):
    # Given an inbound SMS whose callback queued its notification
    answer = load_function("webhook").handler(signed_inbound("Hello", "sim-queued"), FakeContext())
    assert answer["statusCode"] == 200, answer
    # Then its mark is gone, and the sweeper queues nothing, however late it runs
    assert "sweep_at" not in raw_inbound(account["account_id"])
    assert sweeper_runs(monkeypatch, 60) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}
    assert len(queued_notifications(aws)) == 1


def test_a_repeated_callback_of_an_sms_its_callback_queued_is_not_forwarded_again(aws, account):
    from sms_gateway.bootstrap import gateway

    # Given an inbound SMS whose callback stored it and queued its notification
    first = load_function("webhook").handler(signed_inbound("Row F please", "sim-repeated"), FakeContext())
    assert first["statusCode"] == 200, first
    [queued] = queued_notifications(aws)
    # Then the store finds it by its upstream id as queued
    found = gateway().store.find_inbound("simulator", "sim-repeated", account["account_id"], "48974")
    assert found is not None and found.inbound.text == "Row F please" and found.not_queued is False
    # When the upstream posts the callback again (it did not get the answer in time)
    again = load_function("webhook").handler(signed_inbound("Row F please", "sim-repeated"), FakeContext())
    # Then it is acknowledged, stored once, and not forwarded again
    assert again["statusCode"] == 200, again
    assert queued_notifications(aws) == []
    assert raw_inbound(account["account_id"])["inbound_id"] == int(queued["id"][3:])


def test_the_store_finds_an_sms_not_queued_yet_as_such(aws, account, monkeypatch):
    from sms_gateway.bootstrap import gateway

    # Given an inbound SMS whose notification the notify queue refused
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(signed_inbound("Row G please", "sim-unqueued-found"), FakeContext())
    # Then the store finds it by its upstream id as not queued, until its notification is queued
    store = gateway().store
    found = store.find_inbound("simulator", "sim-unqueued-found", account["account_id"], "48974")
    assert found is not None and found.not_queued is True
    store.inbound_notified(found.inbound)
    cleared = store.find_inbound("simulator", "sim-unqueued-found", account["account_id"], "48974")
    assert cleared is not None and cleared.not_queued is False and cleared.inbound == found.inbound
    assert store.find_inbound("simulator", "sim-never-sent", account["account_id"], "48974") is None


@pytest.mark.parametrize("retry_first", [True, False], ids=["callback-retry-then-sweep", "sweep-then-callback-retry"])
def test_a_callback_retry_and_a_sweep_give_the_client_one_webhook_id(aws, account, monkeypatch, retry_first):
    # Given an inbound SMS whose notification the notify queue refused
    refusing_notify_queue(monkeypatch, 1)
    event = signed_inbound("Is the 8pm showing sold out?", "sim-retried")
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(event, FakeContext())
    # When the upstream posts the callback again and the sweeper runs, in either order
    steps = [
        lambda: load_function("webhook").handler(
            signed_inbound("Is the 8pm showing sold out?", "sim-retried"), FakeContext()
        ),
        lambda: sweeper_runs(monkeypatch, 3),
    ]
    for step in steps if retry_first else steps[::-1]:
        step()
    # Then the notification is queued once: by the callback's retry, or by the sweep, after which the retry finds
    # it queued and does not queue it again
    queued = queued_notifications(aws)
    assert len(queued) == 1
    # And nothing is left for a later sweep
    assert sweeper_runs(monkeypatch, 10) == {"inbound_queued": 0, "reports_queued": 0, "batches_released": 0}


def json_key(notification: dict[str, Any]) -> str:
    import json

    return json.dumps(notification, sort_keys=True)


def test_two_sweeps_at_once_queue_an_sms_once(aws, account, monkeypatch):
    # Given an inbound SMS left unqueued by its callback
    refusing_notify_queue(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="SQS"):
        load_function("webhook").handler(signed_inbound("See you at 8", "sim-two-sweeps"), FakeContext())
    # When two sweeper runs find it due in the same moment (EventBridge delivers a rule's event twice, say): the
    # first's claim is made between the second's query and its claim
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    claim = store.claim_inbound_notifications
    second: list[dict[str, Any]] = []

    def first_claims_meanwhile(**kwargs: Any) -> Any:
        monkeypatch.setattr(store, "claim_inbound_notifications", claim)
        second.append(sweeper_runs(monkeypatch, 3))
        return claim(**kwargs)

    monkeypatch.setattr(store, "claim_inbound_notifications", first_claims_meanwhile)
    first = sweeper_runs(monkeypatch, 3)
    # Then one of them queued it, once
    assert sorted([first["inbound_queued"], second[0]["inbound_queued"]]) == [0, 1]
    assert len(queued_notifications(aws)) == 1


def test_a_stop_texted_to_a_released_number_keeps_the_handset_opted_out_under_its_next_owner(
    aws, account, two_upstreams
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import add_sender, create_account, remove_sender

    # Given the operator releasing 48974 from the account that held it (a number moving to another customer)
    remove_sender(account_id=account["account_id"], sender="48974")
    # When a handset the old owner texted from it answers STOP while no account holds it
    answer = load_function("webhook").handler(simulator_mo("STOP", "sim-released-stop"), FakeContext())
    assert answer["statusCode"] == 200, answer
    # And the operator gives 48974 to its next owner
    other = create_account(name="Next Owner", senders=["55555"], credits=100)
    add_sender(account_id=other["account_id"], sender="48974")
    # Then the handset that said STOP to 48974 is not sent to from it (docs/opt-outs.md, "A sender that moves": a
    # number keeps its opt-outs), as it would not be had it texted STOP a minute before the release
    assert gateway().store.opted_out(other["account_id"], "48974", ["+2348020000000"])


def test_a_start_texted_to_a_released_number_after_its_stop_leaves_the_next_owner_free_to_send(
    aws, account, two_upstreams
):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import add_sender, create_account, remove_sender

    # Given 48974 released, and a handset that texted STOP then START to it while no account held it
    remove_sender(account_id=account["account_id"], sender="48974")
    webhook = load_function("webhook")
    for text, message_id in (("STOP", "sim-released-1"), ("START", "sim-released-2")):
        answer = webhook.handler(simulator_mo(text, message_id), FakeContext())
        assert answer["statusCode"] == 200, answer
    # And another SMS to it, which is nobody's
    answer = webhook.handler(simulator_mo("hello?", "sim-released-3"), FakeContext())
    assert answer["statusCode"] == 200, answer
    # When the operator gives 48974 to its next owner
    other = create_account(name="Next Owner", senders=["55555"], credits=100)
    added = add_sender(account_id=other["account_id"], sender="48974")
    # Then what the handset said last decides: nothing carried over, both counters exact
    store = gateway().store
    assert added["opt_outs_carried_over"] == 0
    assert not store.opted_out(other["account_id"], "48974", ["+2348020000000"])
    assert store.get_account(account["account_id"], consistent=True).opt_outs == 0
    assert store.get_account(other["account_id"], consistent=True).opt_outs == 0
    # And nothing was stored in either inbox
    assert store.list_inbounds(account["account_id"])[0] == []
    assert store.list_inbounds(other["account_id"])[0] == []


def test_a_keyword_to_a_released_number_given_to_an_account_meanwhile_fails_for_its_retry(aws, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.optouts import OptOut
    from sms_gateway.errors import Unavailable
    from sms_gateway_tools.admin import add_sender, create_account, remove_sender

    # Given 48974 released by the account, then given to another (after a STOP's callback read who released it)
    remove_sender(account_id=account["account_id"], sender="48974")
    store = gateway().store
    assert store.sender_released_by("48974") == account["account_id"]
    other = create_account(name="Next Owner", senders=["55555"], credits=100)
    add_sender(account_id=other["account_id"], sender="48974")
    assert store.sender_released_by("48974") is None
    # When the STOP's opt-out is written to the releasing account, as a released sender's
    stop = OptOut(account_id=account["account_id"], sender="48974", msisdn="+2348020000000", keyword="STOP", at="x")
    # Then it is refused, nothing written (the callback fails, and its retry reaches the new owner)
    with pytest.raises(Unavailable):
        store.opt_out(stop, while_released=True)
    with pytest.raises(Unavailable):
        store.opt_out(stop.model_copy(update={"account_id": other["account_id"]}), while_released=True)
    assert store.get_account(account["account_id"], consistent=True).opt_outs == 0
    assert not store.opted_out(account["account_id"], "48974", ["+2348020000000"])

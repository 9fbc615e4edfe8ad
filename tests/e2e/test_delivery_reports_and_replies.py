"""End to end over real HTTP: replies threaded onto the conversation, multi-part and per-batch delivery reports,
and upstream callbacks that are duplicated, out of order or forged."""

from __future__ import annotations

import inspect
import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.client_webhook import ClientWebhook
from tests.e2e.test_client_webhooks import assert_signed

pytestmark = pytest.mark.e2e

NUMBER = "2348030000000"  # the number assert_signed tampers with
LONG_TEXT = "Your cinema tickets for Friday are confirmed. " * 6  # 276 GSM-7 characters: two parts


@pytest.fixture(scope="module")
def webhook() -> Iterator[ClientWebhook]:
    with ClientWebhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    # The sweeper every second, and an inbound SMS due for it 2 s after it is stored (2 minutes each on AWS).
    with LocalStack(
        port=0, dlr_delay=0.2, rule_interval=1.0, environment={"INBOUND_SWEEP_DELAY_SECONDS": "2"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any, webhook: ClientWebhook) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(
        name="Threads",
        senders=["48976"],
        credits=100,
        api_url=stack.api_url,
        dlr_url=f"{webhook.url}/dlr",
        inbound_url=f"{webhook.url}/inbound",
    )


def send(stack: Any, account: dict[str, Any], **body: Any) -> str:
    answer = httpx.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": "48976", "to": NUMBER, **body},
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["reference_id"])


def batch(stack: Any, account: dict[str, Any], reference_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{stack.api_url}/ng/v1/batches/{reference_id}",
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_for(stack: Any, account: dict[str, Any], reference_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = batch(stack, account, reference_id)
        if found["status"] == status:
            return found
        time.sleep(0.2)
    raise AssertionError(f"batch {reference_id} never became {status}: {found}")


def messages(stack: Any, account: dict[str, Any], reference_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{stack.api_url}/ng/v1/batches/{reference_id}/delivery_report",
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def reports_for(webhook: ClientWebhook, path: str, reference_id: str, until: set[str]) -> list[dict[str, Any]]:
    """The DLR callbacks of one batch that reach `path`, until one of each status in `until` arrived (the notifier
    posts a batch's notifications concurrently, so a message's reports may arrive in any order)."""
    found: list[dict[str, Any]] = []
    while not until <= {r["body"]["status"] for r in found}:
        request = webhook.next(path)
        if request["body"]["reference_id"] == reference_id:
            found.append(request)
    return found


def quiet(webhook: ClientWebhook, seconds: float = 1.5) -> list[dict[str, Any]]:
    """Whatever else reaches the client webhook in the next few seconds."""
    extra: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            extra.append(webhook.received.get(timeout=left))
        except queue.Empty:
            break
    return extra


def post_simulator_dlr(stack: Any, payload: dict[str, Any], *, secret: str | None = None) -> httpx.Response:
    from sms_gateway_tools.simulator import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    body = json.dumps(payload)
    stamp = str(int(time.time()))
    return httpx.post(
        f"{stack.api_url}/callbacks/simulator/dlr",
        content=body,
        headers={
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret or stack.simulator.secret, stamp, body),
        },
        timeout=10,
    )


def test_a_reply_continues_the_conversation_of_the_last_message_to_that_number(stack, account, webhook):
    # Given a message to the subscriber in session "sess-42" with ref_id "order-42"
    send(stack, account, message="Reply YES to confirm", session_id="sess-42", ref_id="order-42")
    # When the subscriber replies to the shortcode
    result = httpx.post(
        f"{stack.simulator_url}/control/inbound",
        json={"from": NUMBER, "to": "48976", "message": "YES"},
        timeout=10,
    ).json()
    assert result["delivered"] is True
    # Then the client gets the reply in the exact "Receive SMS" format, threaded onto that message
    request = webhook.next("/inbound")
    assert_signed(request, account["signing_secret"])
    body = request["body"]
    assert list(body) == ["type", "telco", "from", "to", "message", "session_id", "sent_date", "ref_id"]
    assert (body["from"], body["to"], body["message"]) == (NUMBER, "48976", "YES")
    assert (body["session_id"], body["ref_id"]) == ("sess-42", "order-42")


def test_a_reply_whose_notification_the_queue_refused_reaches_the_client_from_the_sweeper(
    stack, account, webhook, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    # Given a notify queue that refuses the next notification (SQS unavailable for a moment)
    publish, refused = SqsNotifyQueue.publish, []

    def refuse_once(queue: SqsNotifyQueue, notifications: Any) -> None:
        if not refused:
            refused.append(notifications)
            raise RuntimeError("SQS unavailable")
        publish(queue, notifications)

    monkeypatch.setattr(SqsNotifyQueue, "publish", refuse_once)
    # When the subscriber texts the shortcode: the callback fails, and the upstream (the simulator, like Twilio)
    # never posts it again
    result = httpx.post(
        f"{stack.simulator_url}/control/inbound",
        json={"from": NUMBER, "to": "48976", "message": "Are there seats left for 9pm?"},
        timeout=10,
    ).json()
    assert result["delivered"] is False and refused
    # Then the sweeper queues it once it is due, and the client gets it, signed, once
    request = webhook.next("/inbound")
    assert_signed(request, account["signing_secret"])
    assert (request["body"]["from"], request["body"]["message"]) == (NUMBER, "Are there seats left for 9pm?")
    assert quiet(webhook, 3) == []


def test_a_delivery_report_whose_notification_the_queue_refused_reaches_the_client_from_the_sweeper(
    stack, account, webhook, monkeypatch
):
    from sms_gateway.adapters.sqs import SqsNotifyQueue

    # Given a notify queue that refuses the delivered report of one number whenever the webhook function queues it,
    # so every callback the simulator posts for it (and its retries) fails: only the sweeper gets it through
    number, publish, refused = "2348030000007", SqsNotifyQueue.publish, []

    def refuse_but_from_the_sweeper(queue: SqsNotifyQueue, notifications: Any) -> None:
        ours = [n for n in notifications if n.get("payload", {}).get("to") == number]
        delivered = [n for n in ours if n["payload"]["status"] == "delivered"]
        from_the_sweeper = any(frame.filename.endswith("sms_gateway/sweeps.py") for frame in inspect.stack())
        if delivered and not from_the_sweeper:
            refused.append(delivered)
            raise RuntimeError("SQS unavailable")
        publish(queue, notifications)

    monkeypatch.setattr(SqsNotifyQueue, "publish", refuse_but_from_the_sweeper)
    # When a message to it is sent and delivered
    reference_id = send(stack, account, to=number, message="Your seats: row F", delivery_report="yes")
    reports = reports_for(webhook, "/dlr", reference_id, until={"submitted", "delivered"})
    # Then the client gets the delivered report from the sweeper (seconds here, minutes on AWS), under the webhook id
    # of the change that made it
    assert refused
    [delivered] = [r for r in reports if r["body"]["status"] == "delivered"]
    assert webhook_id(delivered) == f"dlr_{delivered['body']['message_id']}_{delivered['body']['sequence']}"
    # And anything more it gets is that report again under the same id, which it drops (at-least-once: the
    # simulator's retried callbacks mark the message again, and the notifier may post a notification twice), never
    # another report of the message
    assert {
        webhook_id(r) for r in quiet(webhook, 3) if r["body"].get("reference_id") == delivered["body"]["reference_id"]
    } <= {webhook_id(delivered)}


def test_a_multi_part_message_reports_to_the_batch_callback_url_once_every_part_is_delivered(stack, account, webhook):
    # Given a two-part message whose batch names its own callback URL (the simulator reports each part)
    reference_id = send(
        stack,
        account,
        message=LONG_TEXT,
        delivery_report="yes",
        callback_url=f"{webhook.url}/batch-callback",
    )
    # When it is delivered
    reports = reports_for(webhook, "/batch-callback", reference_id, until={"submitted", "delivered"})
    # Then the batch's callback URL (not the account's DLR URL) got one report per status change, signed
    statuses = [r["body"]["status"] for r in sorted(reports, key=lambda r: r["body"]["sequence"])]
    assert statuses == ["submitted", "delivered"]
    assert all(r["body"]["parts"] == 2 for r in reports)
    for request in reports:
        assert_signed(request, account["signing_secret"])
    assert wait_for(stack, account, reference_id, "completed")["counts"] == {"delivered": 1}
    # And the simulator sent a DLR for each part
    [submit] = [m for m in httpx.get(f"{stack.simulator_url}/messages", timeout=10).json() if m["text"] == LONG_TEXT]
    assert (submit["parts"], submit["dlr_delivered"]) == (2, True)


def test_duplicate_out_of_order_and_forged_dlrs_never_move_a_status_back(stack, account, webhook):
    # Given a delivered message whose client asked for delivery reports
    reference_id = send(stack, account, message="See you at 8", delivery_report="yes")
    first = reports_for(webhook, "/dlr", reference_id, until={"submitted", "delivered"})
    wait_for(stack, account, reference_id, "completed")
    [message] = messages(stack, account, reference_id)
    client_ref = f"{account['account_id']}.{reference_id}.{message['message_id']}"
    highest = max(r["body"]["sequence"] for r in first)
    dlr = {"message_id": "sim-replayed", "client_ref": client_ref, "to": NUMBER, "done_at": "2026-01-01T00:00:00Z"}
    # When the upstream repeats the DLR, then sends a late "submitted" and a late failure, then repeats the DLR again
    for status in ("DELIVRD", "ACCEPTD", "UNDELIV", "DELIVRD"):
        answer = post_simulator_dlr(stack, {**dlr, "status": status, "error_code": "000"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["applied"] == 0
    # And someone posts a DLR with a bad signature
    forged = post_simulator_dlr(stack, {**dlr, "status": "UNDELIV"}, secret="not-the-secret")
    assert forged.status_code == 401
    # Then the message is still delivered, with its credit kept, and the client heard nothing new: at most the
    # first repeat of DELIVRD announces the final report again, the same callback under the same webhook-id (in case
    # the first had been written but never queued), which a client drops by that id; the repeat after it, nothing
    # (the first repeat claimed the announcement: the repeat pays, docs/decisions.md)
    [after] = messages(stack, account, reference_id)
    assert after["status"] == "delivered"
    assert batch(stack, account, reference_id)["counts"] == {"delivered": 1}
    late = [r for r in quiet(webhook) if r["body"].get("reference_id") == reference_id]
    final = max(first, key=lambda r: r["body"]["sequence"])  # reports may arrive in any order
    assert [(webhook_id(r), r["body"]) for r in late] in ([], [(webhook_id(final), final["body"])])
    assert highest == max(r["body"]["sequence"] for r in first)


def webhook_id(request: dict[str, Any]) -> str:
    return next(value for name, value in request["headers"].items() if name.lower() == "webhook-id")


def test_a_multi_part_message_with_one_undelivered_part_fails_and_is_refunded(stack, account, webhook):
    # Given an upstream that delivers every part but the last
    httpx.post(f"{stack.simulator_url}/control/settings", json={"failure_rate": 1.0}, timeout=10)
    try:
        before = credits(stack, account)
        # When a two-part message is sent
        reference_id = send(stack, account, message=LONG_TEXT, delivery_report="yes")
        reports = reports_for(webhook, "/dlr", reference_id, until={"failed"})
    finally:
        httpx.post(f"{stack.simulator_url}/control/settings", json={"failure_rate": 0.0}, timeout=10)
    # Then the message failed (part 1's "delivered" did not settle it) and its two credits came back
    assert "delivered" not in [r["body"]["status"] for r in reports]
    assert wait_for(stack, account, reference_id, "completed")["counts"] == {"failed": 1}
    assert credits(stack, account) == before


def credits(stack: Any, account: dict[str, Any]) -> int:
    """The balance as the dry run reports it."""
    answer = httpx.post(
        f"{stack.api_url}/ng/v1/batches/dry_run",
        json={"from": "48976", "to": NUMBER, "message": "balance?"},
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["balance"])


def test_after_stop_a_send_to_that_number_is_refused_and_not_charged(stack, account, webhook):
    # Given a subscriber who texts STOP to the account's shortcode
    stopped, other = "2348030000777", "2348030000778"
    result = httpx.post(
        f"{stack.simulator_url}/control/inbound",
        json={"from": stopped, "to": "48976", "message": "STOP"},
        timeout=10,
    ).json()
    assert result["delivered"] is True
    # (the client still gets the STOP, like any inbound SMS)
    assert webhook.next("/inbound")["body"]["message"] == "STOP"
    before = credits(stack, account)
    # When the account sends to that number and another one
    answer = httpx.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": "48976", "to": [stopped, other], "message": "Weekend offer"},
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    # Then only the other number is sent to and charged; the stopped one is refused with the reason
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["recipients_processed"] == 1
    [refused] = body["refused"]
    assert refused["to"] == stopped
    assert "opted out" in refused["reason"] and "48976" in refused["reason"]
    assert credits(stack, account) == before - 1
    # And a send to the stopped number alone is refused outright, changing nothing
    alone = httpx.post(
        f"{stack.api_url}/ng/v1/sendsms",
        json={"from": "48976", "to": stopped, "message": "Weekend offer"},
        headers={"Authorization": f"Bearer {account['token']}"},
        timeout=10,
    )
    assert alone.status_code == 400
    assert "opted out" in alone.json()["message"]
    assert credits(stack, account) == before - 1


def test_simulate_inbound_reaches_an_account_routed_to_an_upstream_added_on_the_local_stack(
    stack, webhook, monkeypatch, capsys
):
    from sms_gateway import bootstrap
    from sms_gateway_tools import cli
    from sms_gateway_tools.admin import create_account, set_route, set_sender
    from sms_gateway_tools.localstack import stack as stack_module

    for name, value in stack.env.items():  # the operator commands act on this stack, as on `make dev`'s
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    # The simulate commands find this stack as they find `make dev`'s
    monkeypatch.setattr(stack_module, "default_state_dir", lambda: stack.state_dir)
    # Given an upstream named jasmin added to the local stack (a copy of the simulator's parameter)
    assert cli.main(["simulate", "add-upstream", "jasmin"]) == 0
    # And an account routed to it, as docs/operators.md's example `set-route --account ... --upstream jasmin`
    routed = create_account(
        name="Routed",
        senders=["48979"],
        credits=10,
        api_url=stack.api_url,
        inbound_url=f"{webhook.url}/routed-inbound",
    )
    set_route(account_id=routed["account_id"], upstream="jasmin", route_id="routed-to-jasmin")
    # whose number follows its routes (the route change pinned it to simulator and jasmin; released, as the route
    # commands advise once the old upstream is gone)
    set_sender(account_id=routed["account_id"], sender="48979", inbound_upstreams=[])
    bootstrap.reset()  # the webhook's cached route table (kept up to 30 s) sees the new route now
    # When the developer simulates a reply to the account's number from that upstream (docs/local-stack.md, Other
    # upstreams)
    capsys.readouterr()
    code = cli.main(
        ["simulate", "inbound", "--from", NUMBER, "--to", "48979", "--message", "STOP", "--upstream", "jasmin"]
    )
    out = capsys.readouterr().out  # the stack's functions print here too
    assert code == 0 and '"upstream": "jasmin"' in out and '"delivered": true' in out, out
    # Then the account's client gets it (before: only the simulator's own upstream could post it, and the number
    # took inbound SMS from jasmin only: acknowledged and dropped, never stored or forwarded, the STOP not applied)
    assert webhook.next("/routed-inbound")["body"]["message"] == "STOP"

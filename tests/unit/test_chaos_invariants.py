"""The chaos run's invariant checker flags each kind of violation it exists to catch (and passes a clean run)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from sms_gateway.domain.webhooks import new_signing_secret, signed_headers
from sms_gateway_tools.chaos.invariants import (
    AccountCredits,
    MessageRecord,
    Observations,
    UpstreamMessage,
    check,
)
from sms_gateway_tools.chaos.webhook import FlakyWebhook

AT = "2026-01-01T00:00:00.000Z"


def message(message_id: str = "1", **changes: object) -> MessageRecord:
    record = MessageRecord(
        message_id=message_id,
        account_id="7",
        client_ref=f"7.100.{message_id}",
        status="delivered",
        status_at={"accepted": AT, "queued": AT, "submitted": AT, "delivered": AT},
        sequence=3,
        price=2,
        expected_price=2,
        delivery_report=True,
        upstream_message_id=f"sim-{message_id}",
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def callback(message_id: str, sequence: int, status: str) -> dict[str, object]:
    return {"type": "delivery report", "message_id": message_id, "sequence": sequence, "status": status}


def clean_run() -> Observations:
    """One delivered message that asked for reports: both its changes notified, its 2 credits spent."""
    return Observations(
        messages=[message("1")],
        accounts=[AccountCredits(account_id="7", initial=100, balance=98)],
        upstream=[UpstreamMessage(message_id="sim-1", client_ref="7.100.1", dlr_status="DELIVRD")],
        upstream_stats={"resubmits_after_accept": 0, "resubmits_after_timeout": 1},
        notifications={
            "dlr_1_2": callback("1", 2, "submitted"),
            "dlr_1_3": callback("1", 3, "delivered"),
        },
    )


def repeated_after_accept(**changes: object) -> Observations:
    """The clean run, but the simulator got its one reference again after it had written "accepted" for it."""
    repeated = [UpstreamMessage("sim-1", "7.100.1", repeats=1, repeats_after_accept=1, dlr_status="DELIVRD")]
    return replace(clean_run(), upstream=repeated, upstream_stats={"resubmits_after_accept": 1}, **changes)  # type: ignore[arg-type]


def broken(observed: Observations) -> dict[str, int]:
    return {verdict.name: len(verdict.violations) for verdict in check(observed) if not verdict.ok}


def test_a_clean_run_breaks_nothing():
    assert broken(clean_run()) == {}


def test_a_message_left_in_flight_is_flagged_unless_dead_lettered_with_a_reason():
    stuck = replace(clean_run(), messages=[message("1", status="queued", status_at={"queued": AT}, sequence=1)])
    assert broken(stuck)["settled"] == 1
    parked = replace(stuck, dead_lettered_messages={"1": "failed 6 times: RuntimeError"})
    assert "settled" not in broken(parked)


def test_a_second_send_of_one_reference_is_flagged():
    # (The simulator keeps one message per reference, answering a repeat with it: a second send is one of its
    # repeats, never a second upstream message for the reference.)
    # An upstream message for a reference none of the run's messages has (a send the client was told was undone)
    stray = replace(clean_run(), upstream=[*clean_run().upstream, UpstreamMessage("sim-9", "7.200.9")])
    assert broken(stray) == {"submitted_once": 1}
    # A submit of a reference the dispatcher had already read "accepted" for, to an upstream that cannot tell repeats
    heard = replace(clean_run(), resubmitted_after_heard_accept=["7.100.1"], upstream_deduplicates=False)
    assert broken(heard) == {"submitted_once": 1}
    # A repeat after the simulator wrote "accepted", when no submit of that reference went unanswered and no
    # dispatcher that read the answer died before recording it
    assert broken(repeated_after_accept()) == {"submitted_once": 1}


def test_a_deduplicating_upstream_asked_again_after_a_killed_dispatcher_read_accepted_is_not_a_second_send():
    # The dispatcher read "accepted" and was killed before recording it; the one that took its claim over asked the
    # deduplicating upstream again, which answered with the first message's id
    taken_over = repeated_after_accept(
        resubmitted_after_heard_accept=["7.100.1"], accepted_then_killed=frozenset({"7.100.1"})
    )
    assert broken(taken_over) == {}
    [once] = [verdict for verdict in check(taken_over) if verdict.name == "submitted_once"]
    assert "1 references asked again by the dispatcher that took over the claim of a killed one" in once.notes[0]
    # But not if the message then records another upstream message than the one the upstream has
    relabelled = replace(taken_over, messages=[message("1", upstream_message_id="sim-2")])
    assert broken(relabelled) == {"submitted_once": 1}


def test_a_deduplicating_upstream_asked_again_after_a_heard_accept_with_no_dispatcher_killed_is_a_second_send():
    # The dispatcher read "accepted" and was not killed (an SQS duplicate, say, or a claim given up), yet the
    # reference was submitted again: only the takeover of a killed dispatcher's claim may ask again
    asked_again = repeated_after_accept(resubmitted_after_heard_accept=["7.100.1"])
    assert broken(asked_again) == {"submitted_once": 2}
    # Nor does a kill of another reference's dispatcher excuse it
    assert broken(replace(asked_again, accepted_then_killed=frozenset({"7.100.2"}))) == {"submitted_once": 2}


def test_a_kill_loses_the_accepts_its_whole_invocation_had_heard_and_no_others():
    from sms_gateway_tools.chaos.faults import DispatcherKilled, KillAfterSubmit

    kills = KillAfterSubmit(rate=1.0, seed=1)
    # The dispatcher's thread keeps one event loop across invocations (adapters/http.run), each message a task
    loop = asyncio.new_event_loop()

    async def submit(client_ref: str) -> None:
        await asyncio.to_thread(kills.answered, client_ref)

    async def dispatch(heard: list[str]) -> None:
        async with asyncio.TaskGroup() as tasks:
            for client_ref in heard:
                tasks.create_task(submit(client_ref))

    def dispatcher(event: tuple[list[str], bool], context: object) -> None:
        # Each reference of the invocation heard accepted, then (if told) the last one's dispatcher killed
        heard, killed = event
        loop.run_until_complete(dispatch(heard))
        if killed and kills.should_kill(heard[-1]):
            raise DispatcherKilled(heard[-1])

    invoke = kills.one_invocation_each(dispatcher)
    # Given an invocation that heard one accept and lived, then one killed after hearing two, then one that lived
    invoke((["7.100.1"], False), None)
    with pytest.raises(DispatcherKilled):
        invoke((["7.100.2", "7.100.3"], True), None)
    invoke((["7.100.4"], False), None)
    loop.close()
    # Then the killed invocation lost both its accepts (its sibling's with the killed message's), and only those
    assert kills.killed == {"7.100.3"}
    assert kills.accepted_then_killed == {"7.100.2", "7.100.3"}


def test_a_retry_after_an_answer_the_dispatcher_never_read_is_not_a_second_send_on_a_deduplicating_upstream():
    # The simulator wrote "accepted", but the dispatcher's read timed out first, so it submitted again
    retried = repeated_after_accept(unanswered_refs=frozenset({"7.100.1"}), submits_unanswered={"ReadTimeout": 1})
    assert broken(retried) == {}
    # But to an upstream the gateway was told cannot tell repeats (Kannel), that retry is a text sent twice
    assert broken(replace(retried, upstream_deduplicates=False)) == {"submitted_once": 1}
    # And so is a repeat after an injected timeout
    after_timeout = [UpstreamMessage("sim-1", "7.100.1", repeats=1, dlr_status="DELIVRD")]
    assert broken(replace(clean_run(), upstream=after_timeout, upstream_deduplicates=False)) == {"submitted_once": 1}
    assert broken(replace(clean_run(), upstream_deduplicates=False)) == {}


def test_a_status_that_moves_back_is_flagged():
    # Seen by the client: delivered, then submitted again
    regressed = replace(
        clean_run(),
        notifications={"dlr_1_2": callback("1", 2, "delivered"), "dlr_1_3": callback("1", 3, "submitted")},
    )
    assert broken(regressed)["no_regressions"] == 1
    # In the record: it reached delivered but reads submitted
    record = replace(clean_run(), messages=[message("1", status="submitted")])
    assert broken(record)["no_regressions"] == 1


def test_credits_that_do_not_add_up_are_flagged():
    # A delivered message that was also refunded: spent 0, but it cost 2
    refunded = replace(clean_run(), accounts=[AccountCredits(account_id="7", initial=100, balance=100)])
    assert broken(refunded) == {"credits_conserved": 1}
    # A failed message (the upstream reported it undelivered) that was never refunded
    failed = replace(
        clean_run(),
        messages=[message("1", status="failed", status_at={"queued": AT, "submitted": AT, "failed": AT})],
        upstream=[UpstreamMessage("sim-1", "7.100.1", dlr_status="UNDELIV")],
        notifications={"dlr_1_2": callback("1", 2, "submitted"), "dlr_1_3": callback("1", 3, "failed")},
    )
    assert broken(failed) == {"credits_conserved": 1}


def test_credits_are_checked_against_what_the_messages_should_cost_not_the_price_the_gateway_wrote():
    # Given a second delivered message that should cost 2, which the gateway priced 0 and charged nothing for
    # (spent 2 == recorded 2 + 0)
    free = replace(
        clean_run(),
        messages=[message("1"), message("2", delivery_report=False, price=0)],
        upstream=[*clean_run().upstream, UpstreamMessage("sim-2", "7.100.2", dlr_status="DELIVRD")],
    )
    # Then the wrong price and the credits it leaked are flagged
    assert broken(free) == {"credits_conserved": 2}
    # And a message to a number the run never sent to, however priced
    stray = replace(clean_run(), messages=[message("1", expected_price=None)])
    assert broken(stray) == {"credits_conserved": 1}


def test_the_run_knows_what_each_message_should_cost_from_its_network_and_its_parts():
    from sms_gateway.domain.segments import segment
    from sms_gateway_tools.chaos.runner import LONG_TEXT, SHORT_TEXT, Send, expected_prices

    # Given a one-part text to an MTN and an Airtel number, and a two-part text to an MTN number
    short, long = SHORT_TEXT.format(n=1), LONG_TEXT.format(n=3)
    sends = [
        Send(account=0, recipients=("2348030000001", "2348020000002"), text=short, delivery_report=False),
        Send(account=1, recipients=("2348030000003",), text=long, delivery_report=False),
    ]
    # Then each costs its network's price per part (MTN 2, Airtel 3) times its parts, as the gateway counts them
    assert (segment(short).parts, segment(long).parts) == (1, 2)
    assert expected_prices(sends) == {"2348030000001": 2, "2348020000002": 3, "2348030000003": 4}


def test_a_status_change_the_client_never_heard_of_is_flagged():
    missing = replace(clean_run(), notifications={"dlr_1_3": callback("1", 3, "delivered")})
    assert broken(missing) == {"every_change_notified": 1}
    # The report carries the evidence to chase it: the stored history and what the client did get
    (verdict,) = [v for v in check(missing) if not v.ok]
    assert "the message is delivered at sequence 3" in verdict.violations[0]
    assert "callbacks received: [dlr_1_3: delivered]" in verdict.violations[0]
    # Parked in the notify DLQ with its reason counts as accounted for
    parked = replace(missing, dead_lettered_notifications={"dlr_1_2": "client webhook failed 11 attempts"})
    assert broken(parked) == {}


def test_a_status_change_that_never_got_a_sequence_number_still_needs_its_report():
    # Given a message that went queued -> submitted -> delivered (status_at says so) but whose sequence was bumped
    # once only, so its `submitted` change was never announced, and the client got dlr_1_2: delivered
    unnumbered = replace(
        clean_run(),
        messages=[message("1", sequence=2)],
        notifications={"dlr_1_2": callback("1", 2, "delivered")},
    )
    # Then the disagreement, the report missing and the change 2 told as delivered are flagged, though the callbacks
    # agree with `sequence`
    assert broken(unnumbered) == {"every_change_notified": 3}
    # But a DLR that overtook the submit (queued -> delivered, no `submitted` at all) is one change, one report
    overtaken = replace(
        unnumbered, messages=[message("1", sequence=2, status_at={"accepted": AT, "queued": AT, "delivered": AT})]
    )
    assert broken(overtaken) == {}


def test_a_callback_that_does_not_carry_the_change_its_id_names_is_flagged():
    # Given the clean run's delivered message (changes: 2 submitted, 3 delivered), when what the client accepted under
    # dlr_1_2 is a stale copy (still queued): the client was never told it was submitted
    stale = replace(clean_run(), notifications={**clean_run().notifications, "dlr_1_2": callback("1", 2, "queued")})
    assert broken(stale) == {"every_change_notified": 1}
    # Or the body of another change of it (numbered 3) under the id of change 2
    misnumbered = replace(
        clean_run(), notifications={**clean_run().notifications, "dlr_1_2": callback("1", 3, "submitted")}
    )
    assert broken(misnumbered) == {"every_change_notified": 1}


def test_one_change_notified_twice_under_different_ids_is_flagged():
    doubled = replace(
        clean_run(),
        notifications={**clean_run().notifications, "dlr_1_9": callback("1", 9, "submitted")},
    )
    assert "every_change_notified" in broken(doubled)


def test_the_report_counts_the_messages_expired_for_want_of_a_dlr_that_the_upstream_had():
    from sms_gateway_tools.chaos.runner import _expired_unreported

    # Given three messages our settle check expired: one the upstream delivered, one it failed, one it never got
    expired = {"status": "expired", "error_code": "no_delivery_report"}
    observed = replace(
        clean_run(),
        messages=[message("1", **expired), message("2", **expired), message("3", **expired), message("4")],
        upstream=[
            UpstreamMessage("sim-1", "7.100.1", dlr_status="DELIVRD", submitted_at=AT, dlr_delivered_at="late"),
            UpstreamMessage("sim-2", "7.100.2", dlr_status="UNDELIV"),
            UpstreamMessage("sim-4", "7.100.4", dlr_status="DELIVRD"),
        ],
    )
    # Then the report says so, with the times on both sides of those the upstream had
    report = _expired_unreported(observed)
    assert (report["total"], report["reached"], report["delivered"]) == (3, 2, 1)
    first, second = report["examples"]
    assert (first["message_id"], first["upstream_took_it_at"], first["dlr_answered_at"]) == ("1", AT, "late")
    assert (first["status_at"], second["message_id"]) == (message("1").status_at, "2")


def scheduled(message_id: str, reference: str, **changes: object) -> MessageRecord:
    """A message of scheduled batch `reference`: scheduled (1), queued (2), submitted (3), delivered (4)."""
    fields: dict[str, object] = {
        "client_ref": f"7.{reference}.{message_id}",
        "reference_id": reference,
        "status_at": {"accepted": AT, "scheduled": AT, "queued": AT, "submitted": AT, "delivered": AT},
        "sequence": 4,
    }
    return message(message_id, **(fields | changes))


def cancelled_before_release(message_id: str, reference: str, **changes: object) -> MessageRecord:
    """A message of scheduled batch `reference` cancelled before its release: scheduled (1), cancelled (2)."""
    fields: dict[str, object] = {
        "status": "cancelled",
        "status_at": {"accepted": AT, "scheduled": AT, "cancelled": AT},
        "sequence": 2,
        "upstream_message_id": None,
    }
    return scheduled(message_id, reference, **(fields | changes))


def test_a_scheduled_message_is_reported_from_its_submit_and_a_cancelled_one_not_at_all():
    # A released scheduled message: its release (2) is not a report, its submit (3) and delivery (4) are
    released = scheduled("2", "200")
    cancelled = cancelled_before_release("3", "300")
    observed = replace(
        clean_run(),
        messages=[*clean_run().messages, released, cancelled],
        accounts=[AccountCredits(account_id="7", initial=100, balance=96)],
        upstream=[*clean_run().upstream, UpstreamMessage("sim-2", "7.200.2", dlr_status="DELIVRD")],
        notifications={
            **clean_run().notifications,
            "dlr_2_3": callback("2", 3, "submitted"),
            "dlr_2_4": callback("2", 4, "delivered"),
        },
        cancels={"300": 200},
        cancel_refunds={"300": 2},
    )
    assert broken(observed) == {}
    # But a missing submit report of the released one is still flagged
    missing = replace(observed, notifications={k: v for k, v in observed.notifications.items() if k != "dlr_2_3"})
    assert broken(missing) == {"every_change_notified": 1}


def test_a_message_cancelled_in_a_batch_the_client_never_cancelled_is_flagged():
    # Given a batch nobody cancelled whose message ended `cancelled` (and refunded, so the credits balance): dropped
    dropped = cancelled_before_release("2", "200")
    observed = replace(clean_run(), messages=[*clean_run().messages, dropped])
    # Then it is flagged, whether it asked for reports (a cancel sends none) or not
    assert broken(observed) == {"cancels_honoured": 1}
    assert broken(replace(observed, messages=[message("1"), replace(dropped, delivery_report=False)])) == {
        "cancels_honoured": 1
    }
    # But not once the client's cancel of that batch was answered 200
    assert broken(replace(observed, cancels={"200": 200}, cancel_refunds={"200": 2})) == {}


def test_a_final_status_the_upstream_does_not_bear_out_is_flagged():
    # Delivered, charged and final, but the upstream never had it
    assert broken(replace(clean_run(), upstream=[])) == {"settled": 1}
    # Delivered, but the upstream reported it undelivered
    undelivered = [UpstreamMessage("sim-1", "7.100.1", dlr_status="UNDELIV")]
    assert broken(replace(clean_run(), upstream=undelivered)) == {"settled": 1}
    # Failed and refunded (the client told so), but the upstream delivered it
    failed = replace(
        clean_run(),
        messages=[message("1", status="failed", status_at={"queued": AT, "submitted": AT, "failed": AT})],
        accounts=[AccountCredits(account_id="7", initial=100, balance=100)],
        notifications={"dlr_1_2": callback("1", 2, "submitted"), "dlr_1_3": callback("1", 3, "failed")},
    )
    assert broken(failed) == {"settled": 1}
    # Failed at the upstream too, or never reached it: true
    assert broken(replace(failed, upstream=undelivered)) == {}
    assert broken(replace(failed, upstream=[])) == {}
    # Expired for want of a DLR stays allowed whatever the upstream did (a late DLR loses to the expiry)
    expired_at = {"accepted": AT, "queued": AT, "submitted": AT, "expired": AT}
    expired = replace(
        failed, messages=[message("1", status="expired", status_at=expired_at, error_code="no_delivery_report")]
    )
    assert (
        broken(replace(expired, notifications={**clean_run().notifications, "dlr_1_3": callback("1", 3, "expired")}))
        == {}
    )


def test_a_cancel_answered_200_that_let_a_message_out_or_a_409_that_cancelled_one_is_flagged():
    sent_anyway = scheduled("2", "200", delivery_report=False)
    cancelled = cancelled_before_release("3", "300", delivery_report=False)
    base = replace(
        clean_run(),
        messages=[*clean_run().messages, sent_anyway, cancelled],
        accounts=[AccountCredits(account_id="7", initial=100, balance=96)],
        upstream=[*clean_run().upstream, UpstreamMessage("sim-2", "7.200.2", dlr_status="DELIVRD")],
    )
    # Each batch's cancel answered as it turned out: nothing to flag
    assert broken(replace(base, cancels={"200": 409, "300": 200}, cancel_refunds={"300": 2})) == {}
    # A 200 for the batch that went out, a 409 for the one cancelled, and an answer that is neither
    assert broken(replace(base, cancels={"200": 200, "300": 409})) == {"cancels_honoured": 2}
    assert broken(replace(base, cancels={"300": 500})) == {"cancels_honoured": 1}


def test_a_cancel_answered_200_whose_refund_is_not_what_its_batch_cost_is_flagged():
    # Given batch 300 (two messages costing 2 and 3) cancelled before its release, its credits all given back
    first = cancelled_before_release("3", "300", delivery_report=False)
    second = cancelled_before_release("4", "300", delivery_report=False, price=3, expected_price=3)
    observed = replace(clean_run(), messages=[*clean_run().messages, first, second], cancels={"300": 200})
    # When the client was told it got back what the batch cost: nothing to flag
    assert broken(replace(observed, cancel_refunds={"300": 5})) == {}
    # But an answer naming less (a retried cancel told 0, a refund counted short) or more (counted twice), or a 200
    # that named no refund, is a client told a refund other than what came back
    for told in ({"300": 0}, {"300": 2}, {"300": 10}, {}):
        assert broken(replace(observed, cancel_refunds=told)) == {"cancels_honoured": 1}, told


def post_to(webhook: FlakyWebhook, body: dict[str, object], *, token: str | None, secret: str | None) -> int:
    """A notification as the notifier posts it: the account's bearer token, signed with its secret (None: left out)."""
    raw = json.dumps(body, separators=(",", ":"))
    headers: dict[str, str] = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if secret is not None:
        headers |= signed_headers(secret, f"dlr_{body['message_id']}_{body['sequence']}", int(time.time()), raw)
    return webhook.receive(headers, raw.encode())


def test_the_client_webhook_refuses_a_notification_without_a_known_token_or_a_valid_signature():
    # Given the webhook of account 7 (token-of-7), failing no request
    webhook = FlakyWebhook(failure_rate=0.0, seed=1)
    secret = new_signing_secret()
    webhook.register("token-of-7", account_id="7", signing_secret=secret)
    submitted = callback("1", 2, "submitted")
    # When notifications come without a token, with one it does not know, or unsigned
    refused = [
        post_to(webhook, submitted, token=None, secret=None),
        post_to(webhook, submitted, token=None, secret=secret),
        post_to(webhook, submitted, token="token-of-9", secret=secret),
        post_to(webhook, submitted, token="token-of-7", secret=None),
        post_to(webhook, submitted, token="token-of-7", secret=new_signing_secret()),
    ]
    # Then each is refused and counted, and none recorded as delivered
    assert refused == [400] * 5
    assert webhook.log.bad_signatures == 5 and not webhook.log.delivered
    # But the same notification with the account's token and signature is taken, with the account it came for
    assert post_to(webhook, submitted, token="token-of-7", secret=secret) == 200
    assert webhook.log.delivered["dlr_1_2"].account_ids == {"7"}


def test_a_report_delivered_to_another_accounts_webhook_or_of_a_message_never_sent_is_flagged():
    # Given account 7's message 1, whose delivery was announced with account 8's token and signature (the run gives
    # every account the same webhook URL, told apart by token)
    webhook = FlakyWebhook(failure_rate=0.0, seed=1)
    secret_7, secret_8 = new_signing_secret(), new_signing_secret()
    webhook.register("token-of-7", account_id="7", signing_secret=secret_7)
    webhook.register("token-of-8", account_id="8", signing_secret=secret_8)
    assert post_to(webhook, callback("1", 2, "submitted"), token="token-of-7", secret=secret_7) == 200
    assert post_to(webhook, callback("1", 3, "delivered"), token="token-of-8", secret=secret_8) == 200
    # When the run hands the invariants what the webhook took, as the runner does
    observed = replace(
        clean_run(),
        notifications={key: delivery.body for key, delivery in webhook.log.delivered.items()},
        notified_accounts={key: frozenset(delivery.account_ids) for key, delivery in webhook.log.delivered.items()},
    )
    # Then the leak is flagged, though the history is complete and in order
    assert broken(observed) == {"every_change_notified": 1}
    assert "came with the webhook token of account 8" in next(v for v in check(observed) if not v.ok).violations[0]
    # And so is a report of a message the run never sent
    stray = replace(clean_run(), notifications={**clean_run().notifications, "dlr_9_2": callback("9", 2, "submitted")})
    assert broken(stray) == {"every_change_notified": 1}


def test_a_report_of_a_message_of_a_send_undone_whole_is_flagged():
    # Given a send whose queueing the run failed (batch 900 of account 7, answered 503 and sent again afresh), and the
    # withdrawal of its message 901 (failed, not_queued) reported to account 7, which never learnt that message
    withdrawal = callback("901", 2, "failed") | {"reference_id": "900", "error_code": "not_queued"}
    observed = replace(
        clean_run(),
        notifications={**clean_run().notifications, "dlr_901_2": withdrawal},
        notified_accounts={"dlr_901_2": frozenset({"7"})},
        unqueued_batches={"900": "7"},
    )
    # Then it is a violation that names the undone send: the client had no id to place the report by
    assert broken(observed) == {"every_change_notified": 1}
    [notified] = [verdict for verdict in check(observed) if verdict.name == "every_change_notified"]
    assert notified.violations == [
        "dlr_901_2: a report (failed, not_queued) of message 901 of batch 900, a send undone whole (answered 503): "
        "the client never learnt that message's id"
    ]
    assert notified.notes == []
    # And so is a report of any other status of such a message (its upstream's failure, say)
    refused = {"dlr_901_2": withdrawal | {"error_code": "upstream_rejected"}}
    assert broken(replace(observed, notifications={**clean_run().notifications, **refused})) == {
        "every_change_notified": 1
    }
    # But a withdrawn message of a send that stood (answered 2xx, naming it not sent) is among the run's messages:
    # its report is one like any other, expected and checked as such
    stood = message(
        "901",
        reference_id="900",
        status="failed",
        status_at={"accepted": AT, "queued": AT, "failed": "2026-01-01T00:00:01.000Z"},
        sequence=2,
        error_code="not_queued",
    )
    standing = replace(observed, messages=[*clean_run().messages, stood])
    [notified] = [verdict for verdict in check(standing) if verdict.name == "every_change_notified"]
    assert notified.violations == []


def test_the_run_reads_every_record_parked_in_the_fifo_dispatch_dlq():
    import boto3
    from moto import mock_aws

    from sms_gateway_tools.chaos.runner import ChaosOptions, ChaosRun

    with mock_aws():
        # Given 15 records parked in the FIFO dispatch DLQ under one account's lane (message group), with their reason
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        for number in range(15):
            sqs.send_message(
                QueueUrl=url,
                MessageBody=json.dumps({"message_ids": [number]}),
                MessageGroupId="account-7",
                MessageDeduplicationId=f"record-{number}",
                MessageAttributes={"reason": {"DataType": "String", "StringValue": "failed 6 times: RuntimeError"}},
            )
        stack = SimpleNamespace(
            resources=SimpleNamespace(queue_urls={"DispatchDeadLetterQueue": url}), client=lambda _service: sqs
        )
        # When the run reads the DLQ to judge which messages are accounted for
        found = ChaosRun(ChaosOptions(messages=1))._dead_letters(stack, "DispatchDeadLetterQueue")
    # Then it finds all 15 with their reason (receiving stops at the group's first 10, in flight then)
    assert sorted(json.loads(body)["message_ids"][0] for body, _ in found) == list(range(15))
    assert {reason for _, reason in found} == {"failed 6 times: RuntimeError"}


def test_the_reports_expected_follow_what_the_client_asked_not_what_the_gateway_stored():
    # Given a delivered message whose send asked for delivery reports, stored as if it had not, and no report sent
    dropped = replace(
        clean_run(), messages=[message("1", delivery_report=False, asked_for_reports=True)], notifications={}
    )
    # Then the flag the gateway lost and both reports the client never got are flagged
    assert broken(dropped) == {"every_change_notified": 3}
    (verdict,) = [v for v in check(dropped) if not v.ok]
    assert "its send asked for delivery reports (yes), the gateway stored none" in verdict.violations[0]
    # And a message whose send asked for none, stored as if it had asked, whose reports the client then got
    unasked = replace(clean_run(), messages=[message("1", asked_for_reports=False)])
    assert broken(unasked) == {"every_change_notified": 2}
    # But a message stored as its send asked is judged as before
    assert broken(replace(clean_run(), messages=[message("1", asked_for_reports=True)])) == {}
    # And the run knows what each send asked, by recipient, from its plan
    from sms_gateway_tools.chaos.runner import Send, reports_asked

    sends = [Send(0, ("2348030000001", "2348020000002"), "Hi", True), Send(1, ("2348030000003",), "Hi", False)]
    assert reports_asked(sends) == {"2348030000001": True, "2348020000002": True, "2348030000003": False}


def test_the_simulator_times_out_the_stated_share_of_all_submits_beside_its_5xx():
    from sms_gateway_tools.chaos.runner import ChaosOptions, simulator_faults
    from sms_gateway_tools.simulator import UpstreamSimulator

    # Given the simulator with the faults of the default run (20% 5xx, 5% timeouts), seeded
    options = ChaosOptions()
    simulator = UpstreamSimulator(seed=1)
    simulator.configure(**simulator_faults(options))
    # When it takes 20,000 submits of as many messages
    for number in range(20_000):
        simulator.accept({"to": "2348030000001", "text": "Hi", "client_ref": f"7.1.{number}"})
    # Then each fault hit its stated share of them (within about 3 standard errors)
    stats = simulator.stats()
    assert stats["submits"] == 20_000
    assert abs(stats["errors_injected"] / 20_000 - options.upstream_error_rate) < 0.009
    assert abs(stats["timeouts_injected"] / 20_000 - options.upstream_timeout_rate) < 0.005


def test_a_message_the_api_accepted_that_the_table_does_not_hold_is_flagged():
    # Given sends the api answered 200 for two messages, of which the table holds one (final and paid for)
    lost = replace(clean_run(), accepted_messages=2)
    # Then the lost message is flagged, by how many are missing
    assert broken(lost) == {"settled": 1}
    (verdict,) = [v for v in check(lost) if not v.ok]
    assert verdict.violations == ["the api accepted 2 messages, the table holds 1: 1 lost"]
    # And so is a message the table holds more than the api accepted
    assert broken(replace(clean_run(), accepted_messages=0)) == {"settled": 1}
    assert broken(replace(clean_run(), accepted_messages=1)) == {}

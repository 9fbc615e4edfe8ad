"""The chaos run's invariant checker flags each kind of violation it exists to catch (and passes a clean run)."""

from __future__ import annotations

from dataclasses import replace

from sms_gateway_tools.chaos.invariants import (
    AccountCredits,
    MessageRecord,
    Observations,
    UpstreamMessage,
    check,
)

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
    # Two upstream messages for one reference
    twice = replace(clean_run(), upstream=[*clean_run().upstream, UpstreamMessage("sim-9", "7.100.1")])
    assert broken(twice)["submitted_once"] >= 1
    # A submit of a reference the dispatcher had already read "accepted" for, to an upstream that cannot tell repeats
    heard = replace(clean_run(), resubmitted_after_heard_accept=["7.100.1"], upstream_deduplicates=False)
    assert broken(heard) == {"submitted_once": 1}
    # A repeat after the simulator wrote "accepted", when no submit of that reference went unanswered and no
    # dispatcher that read the answer died before recording it
    assert broken(repeated_after_accept()) == {"submitted_once": 1}


def test_a_deduplicating_upstream_asked_again_after_a_killed_dispatcher_read_accepted_is_not_a_second_send():
    # The dispatcher read "accepted" and was killed before recording it; the one that took its claim over asked the
    # deduplicating upstream again, which answered with the first message's id
    taken_over = repeated_after_accept(resubmitted_after_heard_accept=["7.100.1"])
    assert broken(taken_over) == {}
    [once] = [verdict for verdict in check(taken_over) if verdict.name == "submitted_once"]
    assert "1 references asked again by the dispatcher that took over the claim of a killed one" in once.notes[0]
    # But not if the message then records another upstream message than the one the upstream has
    relabelled = replace(taken_over, messages=[message("1", upstream_message_id="sim-2")])
    assert broken(relabelled) == {"submitted_once": 1}


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
    assert broken(replace(observed, cancels={"200": 200})) == {}


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
    expired = replace(failed, messages=[message("1", status="expired", error_code="no_delivery_report")])
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
    assert broken(replace(base, cancels={"200": 409, "300": 200})) == {}
    # A 200 for the batch that went out, a 409 for the one cancelled, and an answer that is neither
    assert broken(replace(base, cancels={"200": 200, "300": 409})) == {"cancels_honoured": 2}
    assert broken(replace(base, cancels={"300": 500})) == {"cancels_honoured": 1}

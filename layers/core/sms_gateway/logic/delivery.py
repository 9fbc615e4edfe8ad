"""Delivery reports from upstreams: find the message, move its status forward only, refund final failures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sms_gateway.domain.models import (
    MAX_UPSTREAM_ID_BYTES,
    CallbackRequest,
    DeliveryReport,
    Message,
    MessageKey,
    StatusChange,
    usable_upstream_id,
)
from sms_gateway.domain.status import SUBMIT_UNCONFIRMED, TERMINAL, MessageStatus, aggregate_parts
from sms_gateway.errors import CallbackRejected, Unauthorized
from sms_gateway.logic.notify import NOTIFY_SWEEP_DELAY, dlr_notification
from sms_gateway.logic.webhook_retries import queued_again
from sms_gateway.observability import logger
from sms_gateway.ports import AccountStore, Holding, MessageStore, Provider

REFUNDED = frozenset({MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.REJECTED})


@dataclass(frozen=True)
class DeliveryDependencies:
    messages: MessageStore
    accounts: AccountStore
    clock: Callable[[], datetime]
    on_change: Callable[[StatusChange], None] | None = None
    # Told of a repeat of the report that settled a message (`changed` False): the first may have died between its
    # status write and its announcement, which an upstream that got no answer retries, so the first repeat announces
    # it again (announce_change: the repeat claims that, later ones find it claimed).
    on_repeat: Callable[[StatusChange], None] | None = None


@dataclass
class DeliveryOutcome:
    applied: int = 0
    unchanged: int = 0
    unmatched: int = 0
    # Reports for an upstream id no message is linked to yet: kept until the dispatcher links it.
    held: int = 0
    # Reports of one part of a multi-part message that did not settle the message yet.
    partial: int = 0


def receive_delivery_reports(
    provider: Provider, request: CallbackRequest, deps: DeliveryDependencies
) -> DeliveryOutcome:
    if not provider.verify_callback(request):
        raise Unauthorized(f"callback not verified for upstream {provider.name!r}")
    reports = provider.parse_delivery_reports(request)
    if not reports:
        raise CallbackRejected("no delivery report in the callback")
    outcome = DeliveryOutcome()
    for report in reports:
        apply_delivery_report(report, deps, outcome)
    return outcome


def announce_change(
    change: StatusChange,
    publish: Callable[[Sequence[dict[str, Any]]], None],
    messages: MessageStore,
    *,
    clock: Callable[[], datetime],
    sweep_delay: timedelta = NOTIFY_SWEEP_DELAY,
) -> None:
    """Queues a report's client notification. When the queue refuses a final change's, the message is marked
    (`announce_pending`, one conditional write that also puts it in the sweeper's index, due `sweep_delay` from now)
    before the error goes on to fail the callback: the sweeper (logic/sweep.py) announces it minutes later, under the
    same webhook id, for an upstream that does not post the callback again; its settle check too, if it comes first.
    The report that made the change writes nothing more (its status write is its one write).

    An upstream's repeat of the report that settled the message (`change.changed` False: on_repeat) pays for itself
    (docs/decisions.md, "A repeated final DLR: the repeat pays"): it queues the report again, under the same webhook
    id, only once it claimed that (`claim_announcement`, one conditional write on `announced`), so the first repeat
    queues it (the first post may have died between its status write and its queueing, and this be its retry) and
    the later ones queue nothing (from session 35 a write after every final report's queueing spared the first
    repeat too: one request more per final report). A repeat of a report whose queueing was refused (the mark names
    its change) queues it and clears the mark, as the sweeper would."""
    notification = dlr_notification(change)
    if notification is None:
        return
    message = change.message
    pending = message.announce_pending is not None and message.announce_pending == message.sequence
    if not change.changed and not pending:
        if not _claimed_for_the_repeat(message, messages):
            return
        # The first post's copy may be on the queue, retrying: delivered first, this one closes its failure record.
        notification = queued_again(notification)
    try:
        publish([notification])
    except Exception:
        # Also a repeat that claimed it: the mark brings it to the sweeper, and lets the upstream's next retry queue it.
        mark_unannounced_finals([change], messages, due=clock() + sweep_delay)
        raise
    if pending:
        # A repeat the upstream posted of a report whose announcement had failed: no sweep need repeat it.
        try:
            messages.clear_unannounced(message.key, message.sequence)
        except Exception:
            # The notification is queued: the callback stands. The sweeper queues it once more, under its id.
            logger.exception("could not clear a delivery report's unannounced mark", extra=_ids(message))


def _claimed_for_the_repeat(message: Message, messages: MessageStore) -> bool:
    """Whether this repeat of the report that made the message's change is the one to queue it again: the first
    whose claim wrote. A repeat that finds it claimed already (the message as its status write found it) writes
    nothing. A claim that cannot be written is taken as won: a report twice (same webhook id) rather than none."""
    if message.announced is not None and message.announced == message.sequence:
        return False
    try:
        return messages.claim_announcement(message.key, message.sequence)
    except Exception:
        logger.exception(
            "could not claim a repeated delivery report's announcement; queued anyway", extra=_ids(message)
        )
        return True


def mark_unannounced_finals(changes: Sequence[StatusChange], messages: MessageStore, *, due: datetime) -> None:
    """Marks the final changes among `changes`, whose announcement the notify queue refused (`announce_pending`, one
    conditional write each, in the sweeper's index from `due`): the sweeper, or the message's settle check, announces
    them under the same webhook ids when nothing else would (an upstream that posts a report once; a report held on
    the upstream's id, applied by a settle check, that no later look tells apart from one announced). The caller
    fails all the same, after: a mark that cannot be written is logged."""
    for change in changes:
        message = change.message
        if message.status not in TERMINAL or dlr_notification(change) is None:
            continue
        try:
            messages.mark_unannounced(message.key, message.sequence, due=due)
        except Exception:
            # Only an upstream that posts the report again brings it back.
            logger.exception("could not mark a delivery report left unannounced", extra=_ids(message))
        else:
            logger.warning("delivery report not announced; the sweeper will", extra=_ids(message))


def _ids(message: Message) -> dict[str, Any]:
    return {"message_id": message.message_id, "sequence": message.sequence}


def link_upstream_id(message: Message, upstream: str, upstream_message_id: str, deps: DeliveryDependencies) -> int:
    """Links an upstream's own id to `message`, for an upstream whose DLRs name only that id, and applies the
    reports held on the id before the link was written (they were waiting for it). Safe to repeat: the link is a
    plain write, and a report applied twice changes nothing the second time. The reports applied."""
    held = deps.messages.link_upstream_id(upstream, upstream_message_id, message.key, now=deps.clock())
    apply_held_reports(message, held, deps)
    return len(held)


def apply_held_reports(message: Message, held: list[DeliveryReport], deps: DeliveryDependencies) -> None:
    """Applies the reports an upstream sent for `message`'s id before the id was linked to it."""
    outcome = DeliveryOutcome()
    for report in held:
        apply_delivery_report(report.model_copy(update={"client_ref": message.key.to_ref()}), deps, outcome)


def _locate(report: DeliveryReport, deps: DeliveryDependencies, outcome: DeliveryOutcome) -> MessageKey | None:
    """The message a report is about; None (counted as held or unmatched) when it cannot be applied now."""
    if report.upstream_message_id and not usable_upstream_id(report.upstream_message_id):
        # No message of ours has such an id (no upstream link could be written with it), and DynamoDB refuses it as
        # a key: unmatched, acknowledged so the upstream does not post it again for ever.
        outcome.unmatched += 1
        logger.warning(
            f"delivery report with an upstream id over {MAX_UPSTREAM_ID_BYTES} bytes: acknowledged and dropped",
            extra={"upstream": report.upstream, "upstream_message_id": report.upstream_message_id[:64]},
        )
        return None
    # Our own client reference is a direct key; the upstream's id goes through the link the dispatcher wrote.
    key = MessageKey.from_ref(report.client_ref)
    if key is not None:
        return key
    if not report.upstream_message_id:
        _unmatched(report, outcome)
        return None
    key = deps.messages.find_by_upstream_id(report.upstream, report.upstream_message_id)
    if key is None:
        # The report overtook the dispatcher's record of the submit: keep it; linking the id applies it.
        held = deps.messages.hold_report(report, now=deps.clock())
        if isinstance(held, MessageKey):
            return held
        # A repeat of a report held already is acknowledged, and not counted held again (until 2026-12-07 it was).
        if held is Holding.HELD:
            outcome.held += 1
            logger.info(
                "delivery report held until its message is linked",
                extra={"upstream": report.upstream, "upstream_message_id": report.upstream_message_id},
            )
    return key


def apply_delivery_report(report: DeliveryReport, deps: DeliveryDependencies, outcome: DeliveryOutcome) -> None:
    key = _locate(report, deps, outcome)
    if key is None:
        return
    whole = report
    part: StatusChange | None = None
    if report.part is not None:
        part = deps.messages.record_part_status(
            key, report.part, report.status, now=deps.clock(), reported_by=report.upstream
        )
        if part is None or not _carried_by(part.message, report.upstream):
            _unmatched(report, outcome)
            return
        if part.message.parts > 1:
            settled = _settled_status(part.message)
            if settled is None:
                outcome.partial += 1
                return
            whole = report.model_copy(update={"status": settled, "part": None})
        else:
            part = None
    change = _noted_interim(key, whole, deps) or deps.messages.transition(
        key,
        whole.status,
        now=deps.clock(),
        upstream=whole.upstream,
        upstream_message_id=whole.upstream_message_id,
        error_code=whole.error_code,
        reported_at=whole.reported_at,
        refund=whole.status in REFUNDED,
        reported_by=whole.upstream,
        settles_as=whole.settles_as,
    )
    if change is None or (not change.changed and not _carried_by(change.message, report.upstream)):
        _unmatched(report, outcome)
        return
    if not change.changed:
        # A duplicate, late or out-of-order report: the conditional write kept the message where it was.
        outcome.unchanged += 1
        _note_error_code(report, change.message, deps)
        if deps.on_repeat is not None and _repeats_the_settling_report(report, part, change.message):
            deps.on_repeat(change)
        return
    outcome.applied += 1
    if deps.on_change is not None:
        deps.on_change(change)


def _noted_interim(key: MessageKey, report: DeliveryReport, deps: DeliveryDependencies) -> StatusChange | None:
    """An interim report that says how the message ends if nothing follows (an SMSC's ACCEPTD or UNKNOWN,
    DeliveryReport.settles_as), on a message already submitted: its word written on the message, in the one write
    such a report makes (its transition would find the message past queued), no status change. None when the
    report says no such thing, or the message is not submitted (still queued: its transition moves it and writes
    the word; final: the transition finds it so)."""
    if report.status is not MessageStatus.SUBMITTED or report.settles_as is None:
        return None
    message = deps.messages.note_settles_as(key, report.settles_as, reported_by=report.upstream)
    return StatusChange(message=message, changed=False) if message is not None else None


def _repeats_the_settling_report(report: DeliveryReport, part: StatusChange | None, message: Message) -> bool:
    """Whether a report that did not move `message` may repeat the one that settled it (announced again: the first
    may have died before its announcement): its status is final and the message's. A part report of a long message
    (`part`, its part's write) only when it repeats that part's own report too, the part already in its status: a
    first report of another part on a settled message (a later part delivered, a late part failed) settles
    nothing and announces nothing, whatever the message's status."""
    if report.status not in TERMINAL or message.status != report.status:
        return False
    if part is None:
        return True
    return not part.changed and part.message.part_status.get(str(report.part)) == report.status


def _note_error_code(report: DeliveryReport, message: Message, deps: DeliveryDependencies) -> None:
    """An error code reported for the status the message is already in: before it is final (Jasmin's level-1 DLR
    of a submit error it retries itself, after we recorded the submit), noted on the message, so the operator sees
    why no later report comes; once it is final, only on a message settled without one (a long message failed by
    another part's report, which read the failing part's status before this report could write its own), so it
    says why it failed. Not a change: the client is not told, the sequence does not step. `report` is the part's
    own report for a long message: its own status, not the one its parts settled."""
    if report.error_code is None or message.status != report.status or message.error_code == report.error_code:
        return
    final = report.status in TERMINAL
    if final and message.error_code is not None:
        return
    deps.messages.note_error_code(
        message.key, report.status, report.error_code, reported_by=report.upstream, absent_only=final
    )


def _carried_by(message: Message, upstream: str) -> bool:
    """Whether the stored message names `upstream` as one that took it or may have it. The store applies a report
    only from such an upstream (or the one a dispatcher is submitting it to, recorded as it applies it; or any, for
    a message left unconfirmed before unconfirmed submits named theirs): a report it kept out from any other is
    counted unmatched, never announced as a repeat."""
    left_unnamed = message.upstream is None and message.error_code == SUBMIT_UNCONFIRMED
    return left_unnamed or upstream in (message.upstream, message.maybe_taken_by)


def _settled_status(message: Message) -> MessageStatus | None:
    """The whole message's final status once its parts settle it (delivered when every part is, failed when
    any part fails); None while they do not."""
    settled = aggregate_parts([MessageStatus(status) for status in message.part_status.values()], message.parts)
    return settled if settled in TERMINAL else None


def _unmatched(report: DeliveryReport, outcome: DeliveryOutcome) -> None:
    outcome.unmatched += 1
    logger.warning(
        "delivery report for an unknown message, or one another upstream carries",
        extra={"upstream": report.upstream, "upstream_message_id": report.upstream_message_id},
    )

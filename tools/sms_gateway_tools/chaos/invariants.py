"""The chaos run's invariants, checked over what the run observed (pure: no AWS, no HTTP, so tests can feed it)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sms_gateway.domain.ids import batch_ids_around
from sms_gateway.domain.status import TERMINAL, MessageStatus, rank, reached_in_order

# Statuses whose credits were given back (logic/delivery.py REFUNDED, plus cancelled by logic/batches.py).
REFUNDED = frozenset({MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.REJECTED, MessageStatus.CANCELLED})
EXAMPLES = 5


@dataclass(frozen=True)
class MessageRecord:
    """A gateway message as the table holds it at the end of the run."""

    message_id: str
    account_id: str
    client_ref: str
    status: str
    status_at: Mapping[str, str]
    sequence: int
    # What the gateway recorded it cost, and what the run says it should cost (its network's price per part times
    # its text's parts; None: a recipient the run never sent to).
    price: int
    expected_price: int | None
    # Whether the gateway stored the message as asking for delivery reports, and whether its send asked for them
    # (the run's plan; None: a message the run never sent, judged by what was stored).
    delivery_report: bool
    error_code: str | None = None
    upstream_message_id: str | None = None
    reference_id: str = ""
    asked_for_reports: bool | None = None

    @property
    def reports_asked(self) -> bool:
        """Whether the client is owed this message's reports: as its send asked, not as the gateway stored it."""
        return self.delivery_report if self.asked_for_reports is None else self.asked_for_reports


@dataclass(frozen=True)
class AccountCredits:
    account_id: str
    initial: int
    balance: int


@dataclass(frozen=True)
class UpstreamMessage:
    """A message the upstream simulator created (it creates one per client_ref, answering repeats with it)."""

    message_id: str
    client_ref: str | None
    repeats: int = 0
    # Repeats that came after the simulator had written its 'accepted' answer to an earlier submit.
    repeats_after_accept: int = 0
    # The final state the simulator reports for it (DELIVRD, UNDELIV).
    dlr_status: str | None = None
    # When it first took the message, and when the gateway answered the DLR that completed it (None: never did).
    submitted_at: str | None = None
    dlr_delivered_at: str | None = None


@dataclass
class Observations:
    messages: list[MessageRecord]
    accounts: list[AccountCredits]
    upstream: list[UpstreamMessage]
    # The simulator's counters: `resubmits_after_accept` are repeats after it had answered the sender in time.
    upstream_stats: Mapping[str, int]
    # Client webhook: webhook-id -> the notification body it accepted (answered 200).
    notifications: Mapping[str, Mapping[str, Any]]
    # webhook-id -> the accounts whose webhook token the notification came with (the run's accounts share one URL).
    notified_accounts: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # reference_id -> account_id of the batches whose queueing the run failed (chaos/faults.py): sends undone, whose
    # messages the client never learnt (a send that stood after all is among the run's messages).
    unqueued_batches: Mapping[str, str] = field(default_factory=dict)
    # message_id -> reason, for messages whose dispatch record sits in the dispatch DLQ.
    dead_lettered_messages: Mapping[str, str] = field(default_factory=dict)
    # webhook-id -> reason, for notifications parked in the notify DLQ after every attempt failed.
    dead_lettered_notifications: Mapping[str, str] = field(default_factory=dict)
    # The dispatcher's side (chaos/faults.py): references submitted again after it had read their 'accepted';
    # references with a submit whose answer it never read, and those submits by error type (ReadTimeout, ...).
    resubmitted_after_heard_accept: list[str] = field(default_factory=list)
    # References a dispatcher read 'accepted' for in an invocation that was then killed (chaos/faults.py).
    accepted_then_killed: frozenset[str] = frozenset()
    unanswered_refs: frozenset[str] = frozenset()
    submits_unanswered: Mapping[str, int] = field(default_factory=dict)
    # Whether the gateway was told the upstream deduplicates by our reference: if not, no repeat is allowed.
    upstream_deduplicates: bool = True
    # reference_id -> the HTTP status the client's cancel of that scheduled batch was answered with.
    cancels: Mapping[str, int] = field(default_factory=dict)
    # reference_id -> the credits the cancel's 200 said it gave back (`refunded_credits`: under the client's
    # Idempotency-Key, a retry after a lost answer gets the first answer's, so it must be the whole batch's cost).
    cancel_refunds: Mapping[str, int] = field(default_factory=dict)
    # How many messages the api's 200 answers accepted (None: not counted); the table must hold as many.
    accepted_messages: int | None = None


@dataclass
class Verdict:
    name: str
    title: str
    checked: int
    violations: list[str] = field(default_factory=list)
    # Facts the reader needs to judge the figure (not violations).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "ok": self.ok,
            "checked": self.checked,
            "violations": len(self.violations),
            "examples": self.violations[:EXAMPLES],
            "notes": self.notes,
        }


def check(observed: Observations) -> list[Verdict]:
    return [
        settled(observed),
        submitted_once(observed),
        no_regressions(observed),
        credits_conserved(observed),
        every_change_notified(observed),
        cancels_honoured(observed),
    ]


def settled(observed: Observations) -> Verdict:
    """Every message the api accepted is in the table, and final, or parked in the dispatch DLQ with a reason; and a
    final status the upstream bears out:
    `delivered` only for a message the upstream has and reported DELIVRD, `failed` or `rejected` never for one it
    delivered (`expired` stays open either way: a DLR that comes after the wait loses to the expiry)."""
    verdict = Verdict("settled", "every message final, or in a DLQ with its reason", len(observed.messages))
    accepted, held = observed.accepted_messages, len(observed.messages)
    if accepted is not None and accepted != held:
        verdict.violations.append(
            f"the api accepted {accepted} messages, the table holds {held}: "
            + (f"{accepted - held} lost" if accepted > held else f"{held - accepted} more than accepted")
        )
    upstream = {copy.client_ref: copy for copy in observed.upstream}
    parked = 0
    for message in observed.messages:
        status = MessageStatus(message.status)
        if status in TERMINAL:
            untrue = _untrue_to_the_upstream(message, upstream.get(message.client_ref))
            if untrue:
                verdict.violations.append(untrue)
            continue
        if observed.dead_lettered_messages.get(message.message_id):
            parked += 1
            continue
        verdict.violations.append(f"{message.message_id} is still {message.status}")
    if parked:
        verdict.notes.append(f"{parked} in the dispatch DLQ with a reason")
    return verdict


def _untrue_to_the_upstream(message: MessageRecord, copy: UpstreamMessage | None) -> str | None:
    """Why a final status is one the message cannot honestly have reached, by what the upstream holds; None if it
    can have."""
    status = MessageStatus(message.status)
    if status == MessageStatus.DELIVERED and copy is None:
        return f"{message.message_id} is delivered, but the upstream never had it"
    if status == MessageStatus.DELIVERED and copy is not None and copy.dlr_status != "DELIVRD":
        return f"{message.message_id} is delivered, but the upstream reported it {copy.dlr_status}"
    if status in (MessageStatus.FAILED, MessageStatus.REJECTED) and copy is not None and copy.dlr_status == "DELIVRD":
        return f"{message.message_id} is {status} ({message.error_code}), but the upstream delivered it"
    return None


def submitted_once(observed: Observations) -> Verdict:
    """No message the upstream would have sent twice: no reference submitted again after the dispatcher had read the
    upstream's 'accepted' for it, and every upstream message one of ours. The simulator keeps one message per client
    reference (a repeat answers the first message's id), so a second send shows as its repeat counts, judged here,
    never as a second upstream message for the reference.

    Against an upstream the gateway was told cannot tell repeats (the default run), every repeat of a reference is a
    violation. Against one it may count on to deduplicate, a repeat after a submit whose answer the dispatcher never
    read (an injected timeout, or its own read timeout firing on an answer the simulator had just written) is the
    designed retry, deduplicated by the upstream by our reference: the dispatcher cannot tell it from a submit that
    never arrived. The simulator counts an answer
    accepted once its write succeeded, so it counts the second kind among its `resubmits_after_accept`: such a
    repeat is a fault only for a reference with no unanswered submit."""
    verdict = Verdict("submitted_once", "no message submitted upstream twice", len(observed.messages))
    ours = {message.client_ref: message for message in observed.messages}
    by_ref: dict[str | None, list[UpstreamMessage]] = defaultdict(list)
    for copy in observed.upstream:
        by_ref[copy.client_ref].append(copy)
    for client_ref, copies in by_ref.items():
        if client_ref not in ours:
            verdict.violations.append(f"the upstream has {len(copies)} message(s) for unknown reference {client_ref}")
    if not observed.upstream_deduplicates:
        for copy in observed.upstream:
            if copy.repeats:
                verdict.violations.append(
                    f"{copy.client_ref} submitted {copy.repeats + 1} times to an upstream that cannot tell repeats"
                )
    # A dispatcher can only submit a message it claimed, and only a queued message can be claimed: a reference
    # submitted again after a dispatcher read its 'accepted' is one whose answer was never recorded. A deduplicating
    # upstream is asked again by whoever takes over the lapsed claim of a dispatcher killed before it recorded the
    # answer (the designed takeover: docs/dispatch.md, step 3); any other never.
    taken_over: set[str] = set()
    for client_ref in observed.resubmitted_after_heard_accept:
        if observed.upstream_deduplicates and client_ref in observed.accepted_then_killed:
            taken_over.add(client_ref)
        elif observed.upstream_deduplicates:
            verdict.violations.append(
                f"{client_ref} submitted again after the dispatcher had read 'accepted', and no dispatcher that "
                "read it was killed"
            )
        else:
            verdict.violations.append(f"{client_ref} submitted again after the dispatcher had read 'accepted'")
    for copy in observed.upstream:
        if copy.repeats_after_accept and copy.client_ref not in observed.unanswered_refs | taken_over:
            verdict.violations.append(
                f"{copy.client_ref} submitted again after the simulator answered 'accepted', with no submit whose "
                "answer the dispatcher missed"
            )
    for message in observed.messages:
        copies = by_ref.get(message.client_ref, [])
        if message.upstream_message_id and copies and copies[0].message_id != message.upstream_message_id:
            verdict.violations.append(
                f"{message.message_id} records upstream id {message.upstream_message_id}, "
                f"the upstream has {copies[0].message_id}"
            )
    unanswered = ", ".join(f"{name} {count}" for name, count in sorted(observed.submits_unanswered.items()))
    repeats = (
        f"{observed.upstream_stats.get('resubmits_after_timeout', 0)} resubmits after an injected timeout and "
        f"{observed.upstream_stats.get('resubmits_after_accept', 0)} after an answer the simulator wrote, all "
        f"deduplicated by the upstream; {len(taken_over)} references asked again by the dispatcher that took "
        "over the claim of a killed one that had read 'accepted'"
        if observed.upstream_deduplicates
        else f"an upstream that cannot tell repeats: {sum(copy.repeats for copy in observed.upstream)} repeats"
    )
    verdict.notes.append(
        f"{repeats}; submits whose answer the dispatcher did not read: {unanswered or 'none'}; "
        f"{sum(1 for m in observed.messages if m.error_code == 'submit_unconfirmed')} "
        "left submitted-unconfirmed at the end (a dispatcher died, or no answer came, and no DLR settled it)"
    )
    return verdict


def no_regressions(observed: Observations) -> Verdict:
    """Status never moves back: along the client's callbacks in sequence order, and in each final record."""
    verdict = Verdict("no_regressions", "no status regression", len(observed.messages))
    for message_id, seen in _callbacks_by_message(observed.notifications.values()).items():
        ordered = sorted(seen, key=lambda body: int(body.get("sequence") or 0))
        for before, after in itertools.pairwise(ordered):
            earlier, later = MessageStatus(before["status"]), MessageStatus(after["status"])
            if rank(later) < rank(earlier) or earlier in TERMINAL:
                verdict.violations.append(
                    f"{message_id}: {earlier} (sequence {before.get('sequence')}) then {later} "
                    f"(sequence {after.get('sequence')})"
                )
    for message in observed.messages:
        status = MessageStatus(message.status)
        reached = [MessageStatus(name) for name in message.status_at]
        if any(rank(other) > rank(status) for other in reached):
            verdict.violations.append(f"{message.message_id} is {status} but reached {', '.join(map(str, reached))}")
        finals = [other for other in reached if other in TERMINAL]
        if len(finals) > 1:
            verdict.violations.append(f"{message.message_id} reached more than one final state: {finals}")
    return verdict


def credits_conserved(observed: Observations) -> Verdict:
    """Per account: credits spent (initial - balance) == what its messages that were not refunded should cost, by
    the run's own prices (not the price the gateway recorded, which must agree)."""
    verdict = Verdict("credits_conserved", "credits conserved (charged - refunded == delivered or in flight)", 0)
    kept: dict[str, int] = defaultdict(int)
    refunded: dict[str, int] = defaultdict(int)
    for message in observed.messages:
        if message.price != message.expected_price:
            verdict.violations.append(
                f"{message.message_id} was priced {message.price}, but should cost "
                + (
                    "nothing: the run never sent to its number"
                    if message.expected_price is None
                    else str(message.expected_price)
                )
            )
        cost = _cost(message)
        if MessageStatus(message.status) in REFUNDED:
            refunded[message.account_id] += cost
        else:
            kept[message.account_id] += cost
    for account in observed.accounts:
        verdict.checked += 1
        spent = account.initial - account.balance
        if spent != kept[account.account_id]:
            verdict.violations.append(
                f"account {account.account_id}: spent {spent}, but its delivered or in-flight messages cost "
                f"{kept[account.account_id]} (refunded {refunded[account.account_id]})"
            )
    verdict.notes.append(f"charged {sum(kept.values()) + sum(refunded.values())}, refunded {sum(refunded.values())}")
    return verdict


def every_change_notified(observed: Observations) -> Verdict:
    """Each status change of a message that asked for delivery reports reached the client webhook (its
    sequence numbers 2.. count the changes after `queued`, as its `status_at` records them, and its `sequence`
    must agree), or sits in the notify DLQ with its reason; no
    change twice under different ids; nothing for messages that did not ask; each report only to the account
    whose message it is (by the webhook token it came with), and none of a message the run never sent."""
    verdict = Verdict("every_change_notified", "every status change delivered to the client webhook", 0)
    messages = {message.message_id: message for message in observed.messages}
    parked = 0
    for message in observed.messages:
        if message.reports_asked != message.delivery_report:
            verdict.violations.append(
                f"{message.message_id}: its send asked for delivery reports ({_yes_or_none(message.reports_asked)}), "
                f"the gateway stored {_yes_or_none(message.delivery_report)}"
            )
        if not message.reports_asked or message.status == MessageStatus.CANCELLED:
            # A cancel is the client's own request and sends no reports (docs/delivery-reports.md).
            continue
        # The reports expected follow from the statuses the message reached, not from its `sequence`: a change
        # written without a number of its own was never announced.
        written, reported = _status_writes(message)
        if message.sequence != written:
            verdict.violations.append(
                f"{message.message_id} is at sequence {message.sequence}, but made {written} status writes; "
                + _what_the_client_got(message, observed.notifications)
            )
        for sequence, status in reported.items():
            verdict.checked += 1
            webhook_id = f"dlr_{message.message_id}_{sequence}"
            body = observed.notifications.get(webhook_id)
            if body is not None:
                # What the client keeps under the id (it deduplicates by it) must be that change.
                told = (str(body.get("message_id")), body.get("sequence"), body.get("status"))
                if told != (message.message_id, sequence, status):
                    verdict.violations.append(
                        f"{webhook_id} (change {sequence} of {message.message_id}: {status}) arrived as message "
                        f"{told[0]}'s sequence {told[1]}, {told[2]}; "
                        + _what_the_client_got(message, observed.notifications)
                    )
                continue
            if observed.dead_lettered_notifications.get(webhook_id):
                parked += 1
                continue
            verdict.violations.append(
                f"{webhook_id} (change {sequence} of {message.message_id}) never arrived; "
                + _what_the_client_got(message, observed.notifications)
            )
        last = observed.notifications.get(f"dlr_{message.message_id}_{message.sequence}")
        if last is not None and last.get("status") != message.status:
            verdict.violations.append(
                f"{message.message_id}: the last callback says {last.get('status')}, the message is {message.status}"
            )
    for webhook_id, body in sorted(observed.notifications.items()):
        if body.get("type") != "delivery report":
            continue
        accounts = observed.notified_accounts.get(webhook_id, frozenset())
        if str(body.get("message_id")) not in messages and _of_a_send_undone_whole(body, observed):
            verdict.violations.append(
                f"{webhook_id}: a report ({body.get('status')}, {body.get('error_code') or 'no error code'}) of "
                f"message {body.get('message_id')} of batch {body.get('reference_id')}, a send undone whole (answered "
                "503): the client never learnt that message's id"
            )
            continue
        leaked = _not_for_its_account(webhook_id, body, messages, accounts)
        if leaked:
            verdict.violations.append(leaked)
    for message_id, seen in _callbacks_by_message(observed.notifications.values()).items():
        asked = messages.get(message_id)
        if asked is not None and not asked.reports_asked:
            verdict.violations.append(f"{message_id} did not ask for delivery reports but got {len(seen)}")
        statuses = [body["status"] for body in seen]
        for status in {s for s in statuses if statuses.count(s) > 1}:
            verdict.violations.append(f"{message_id}: {status} notified {statuses.count(status)} times")
    if parked:
        verdict.notes.append(f"{parked} in the notify DLQ with a reason")
    return verdict


def cancels_honoured(observed: Observations) -> Verdict:
    """A cancel answered 200 cancelled the whole batch: every message `cancelled` and none at the upstream, and the
    refund it answered is what the batch cost (the run's prices), the credits that came back (invariant
    credits_conserved holds the balance to that). One answered 409 lost to the schedule's release: none of its
    messages cancelled (they go out as any others). No other answer. And no message is `cancelled` in a batch the
    client never cancelled."""
    verdict = Verdict("cancels_honoured", "a cancel did what its answer said (200: nothing sent)", 0)
    by_reference: dict[str, list[MessageRecord]] = defaultdict(list)
    for message in observed.messages:
        by_reference[message.reference_id].append(message)
    at_upstream = {copy.client_ref for copy in observed.upstream}
    # Only a client's cancel answered 200 cancels (logic/batches.py): a batch cancelled without one was dropped.
    for reference_id, batch in sorted(by_reference.items()):
        cancelled = [m for m in batch if m.status == MessageStatus.CANCELLED]
        if cancelled and reference_id not in observed.cancels:
            verdict.checked += 1
            verdict.violations.append(
                f"batch {reference_id}: {len(cancelled)} of its {len(batch)} messages are cancelled, but the client "
                "never cancelled it"
            )
    for reference_id, status in sorted(observed.cancels.items()):
        verdict.checked += 1
        batch = by_reference.get(reference_id, [])
        cancelled = [m for m in batch if m.status == MessageStatus.CANCELLED]
        sent = [m for m in batch if m.client_ref in at_upstream]
        if status == 200 and (len(cancelled) != len(batch) or sent or not batch):
            verdict.violations.append(
                f"batch {reference_id}: cancel answered 200, but {len(batch) - len(cancelled)} of its {len(batch)} "
                f"messages are not cancelled and {len(sent)} reached the upstream"
            )
        elif status == 200 and observed.cancel_refunds.get(reference_id) != (cost := sum(map(_cost, batch))):
            told = observed.cancel_refunds.get(reference_id)
            verdict.violations.append(
                f"batch {reference_id}: cancel answered 200 "
                + ("naming no refund" if told is None else f"refunding {told} credits")
                + f", but its {len(batch)} cancelled messages cost {cost}"
            )
        elif status == 409 and cancelled:
            verdict.violations.append(f"batch {reference_id}: cancel answered 409, yet {len(cancelled)} are cancelled")
        elif status not in (200, 409):
            verdict.violations.append(f"batch {reference_id}: cancel answered {status}")
    answered: dict[int, int] = defaultdict(int)
    for status in observed.cancels.values():
        answered[status] += 1
    if answered:
        verdict.notes.append(
            ", ".join(f"{count} answered {status}" for status, count in sorted(answered.items()))
            + f"; {sum(observed.cancel_refunds.values())} credits refunded as the 200s said"
        )
    return verdict


def _cost(message: MessageRecord) -> int:
    """What a message should cost: the run's price of it, or, for one the run never sent, what the gateway recorded
    (flagged by credits_conserved)."""
    return message.price if message.expected_price is None else message.expected_price


def _yes_or_none(delivery_report: bool) -> str:
    """A delivery_report flag as the send's API spells it."""
    return "yes" if delivery_report else "none"


def _status_writes(message: MessageRecord) -> tuple[int, dict[int, MessageStatus]]:
    """The sequence number the message's `status_at` says it is at (1 for the status it was stored in, one more per
    status it moved to since), and the moves that are reports, by sequence number, with the status each moved to: all
    but the release of a scheduled batch (scheduled -> queued) and a cancel, the client's own request
    (docs/delivery-reports.md)."""
    reached = [status for status in reached_in_order(message.status_at) if status != MessageStatus.ACCEPTED]
    reported: dict[int, MessageStatus] = {
        sequence: status
        for sequence, status in enumerate(reached, start=1)
        if sequence > 1 and status not in (MessageStatus.QUEUED, MessageStatus.CANCELLED)
    }
    return len(reached), reported


def _of_a_send_undone_whole(body: Mapping[str, Any], observed: Observations) -> bool:
    """Whether a report (of a message the run's sends do not hold) is of a message of a batch whose queueing the run
    failed: its send was undone whole and answered 503 (one that stood is among the run's sends)."""
    reference_id = str(body.get("reference_id"))
    lowest, highest = batch_ids_around(int(body.get("message_id") or 0))
    return reference_id in observed.unqueued_batches and lowest <= int(reference_id) <= highest


def _not_for_its_account(
    webhook_id: str,
    body: Mapping[str, Any],
    messages: Mapping[str, MessageRecord],
    accounts: frozenset[str],
) -> str | None:
    """Why a delivery report the client accepted was not its own: a message the run never sent, or one of another
    account's, announced under this account's token; None if it was."""
    message = messages.get(str(body.get("message_id")))
    if message is None:
        return f"{webhook_id}: a report of message {body.get('message_id')}, which the run never sent"
    others = sorted(accounts - {message.account_id})
    if others:
        return (
            f"{webhook_id}: a report of account {message.account_id}'s message {message.message_id} came with "
            f"the webhook token of account {', '.join(others)}"
        )
    return None


def _what_the_client_got(message: MessageRecord, notifications: Mapping[str, Mapping[str, Any]]) -> str:
    """A missing change's evidence: the message's status history as stored, and the callbacks that did arrive."""
    history = ", ".join(f"{status} {message.status_at[status]}" for status in reached_in_order(message.status_at))
    received = sorted(
        f"{webhook_id}: {body.get('status')}"
        for webhook_id, body in notifications.items()
        if str(body.get("message_id")) == message.message_id
    )
    return (
        f"the message is {message.status} at sequence {message.sequence} ({message.error_code or 'no error code'}), "
        f"status_at [{history}]; callbacks received: [{', '.join(received) or 'none'}]"
    )


def _callbacks_by_message(bodies: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for body in bodies:
        if body.get("type") == "delivery report":
            found[str(body.get("message_id"))].append(body)
    return found

"""Inbound (two-way) SMS: route to the account that owns the number it was sent to, from an upstream allowed to
deliver that number's SMS; store, forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sms_gateway.domain.ids import id_time_ms, new_id
from sms_gateway.domain.models import (
    MAX_UPSTREAM_ID_BYTES,
    CallbackRequest,
    InboundSms,
    SenderRegistration,
    SentMessage,
    StoredInbound,
    usable_upstream_id,
)
from sms_gateway.domain.msisdn import InvalidMsisdn, Msisdn, national_digits, parse_msisdn, read_in_country
from sms_gateway.domain.optouts import keyword_request
from sms_gateway.domain.routing import RouteTable
from sms_gateway.domain.segments import MOST_PARTS, MOST_SMS_UNITS, utf16_units
from sms_gateway.domain.senders import MAX_INBOUND_SENDER, inbound_sender, recipient_forms
from sms_gateway.errors import CallbackRejected, Unauthorized
from sms_gateway.logic.notify import NOTIFY_SWEEP_DELAY
from sms_gateway.logic.optouts import apply_keyword, apply_keyword_to_released_sender, records_of
from sms_gateway.observability import logger, mask_msisdn
from sms_gateway.ports import AccountStore, ConversationLookup, InboxStore, OptOutStore, Provider

INBOUND = "inbound"

# What a lookup of the number an SMS was sent to finds (`_found_under`).
Found = TypeVar("Found")


@dataclass(frozen=True)
class InboundDependencies:
    accounts: AccountStore
    inbox: InboxStore
    publish: Callable[[dict[str, Any]], None]
    clock: Callable[[], datetime]
    # The route table: a number with no list of inbound upstreams of its own takes inbound SMS from the upstreams its
    # account's routes name.
    routes: Callable[[], RouteTable]
    # Threads a reply onto the last message the account sent to that number; None: every SMS starts anew.
    conversations: ConversationLookup | None = None
    # Applies STOP / START keywords to the account's opt-outs; None: keywords are forwarded like any message.
    opt_outs: OptOutStore | None = None
    # How long after it is stored an SMS whose notification is not queued waits for the sweeper to queue it.
    notify_sweep_delay: timedelta = NOTIFY_SWEEP_DELAY
    # The country whose national forms the upstream writes numbers in (its `country` setting: an SMSC passes
    # `08020000011` as the network gave it); None: a national form is read only as the account's own numbers are.
    upstream_country: str | None = None


@dataclass(frozen=True)
class InboundOutcome:
    routed: bool
    stored: bool
    inbound: StoredInbound | None = None
    # Sent to an account's number by an upstream not allowed to deliver that number's SMS: acknowledged, not taken.
    not_allowed: bool = False


def inbound_notification(inbound: StoredInbound) -> dict[str, Any]:
    """The seeds' "Receive SMS" body, exactly: numbers in international format without '+'. A STOP / START whose
    opt-out change is still to be made says so outside the payload, for the notifier to make it
    (apply_keyword_still_pending) if the callback's own attempt fails and its upstream never retries."""
    return {
        "kind": INBOUND,
        "id": f"in_{inbound.inbound_id}",
        "account_id": inbound.account_id,
        **({"keyword_pending": inbound.inbound_id} if inbound.keyword_pending else {}),
        "url": None,
        "payload": {
            "type": "two-way sms",
            "telco": inbound.telco,
            "from": inbound.msisdn.lstrip("+"),
            "to": inbound.to,
            "message": inbound.text,
            "session_id": inbound.session_id,
            "sent_date": inbound.received_at,
            "ref_id": inbound.ref_id,
        },
    }


def receive_inbound(provider: Provider, request: CallbackRequest, deps: InboundDependencies) -> InboundOutcome:
    if not provider.verify_callback(request):
        raise Unauthorized(f"callback not verified for upstream {provider.name!r}")
    sms = _with_usable_id(_no_longer_than_an_sms(provider.parse_inbound(request)))
    forms = _recipient_forms(sms.to, deps)
    to, registration = _recipient(forms, deps)
    # One form of the account's number from here on: stored, forwarded, threaded and opted out of as registered.
    sms = sms.model_copy(update={"to": to})
    if registration is None:
        # Acknowledged so the upstream stops retrying; nobody here owns that number. A STOP / START to a number an
        # operator released is applied first, for its next owner (a failure fails the callback, to be retried).
        _apply_keyword_to_released_sender(provider.name, sms, forms, deps)
        logger.warning(
            "inbound SMS to a number no account owns (an upstream that writes numbers in national form needs its "
            "`country` setting)",
            extra={"to": sms.to, "upstream": sms.upstream, "upstream_country": deps.upstream_country},
        )
        return InboundOutcome(routed=False, stored=False)
    account_id = registration.account_id
    allowed = registration.inbound_upstreams_with(deps.routes().upstreams_for_account(account_id))
    if provider.name not in allowed:
        # Valid credentials of one upstream (a box shared with a partner, another account's carrier) must not make
        # replies or opt-outs for every account's numbers. Acknowledged, like a number no account owns, so that an
        # upstream that may not deliver it stops retrying; nothing is stored, forwarded or applied.
        logger.warning(
            "inbound SMS from an upstream not allowed to deliver that number's SMS: acknowledged, not taken "
            "(an upstream that carries only inbound SMS must be named in the number's inbound upstreams)",
            extra={
                "upstream": provider.name,
                "to": sms.to,
                "from": mask_msisdn(sms.msisdn),
                "account_id": account_id,
                "allowed": sorted(allowed),
            },
        )
        return InboundOutcome(routed=False, stored=False, not_allowed=True)
    sender = _sender(sms.msisdn, account_id, deps)
    stored = _stored(sms, account_id, sender, deps.conversations, applies_keywords=deps.opt_outs is not None)
    # Stored marked as not queued yet, in the same write: a callback that fails or dies before the notification is
    # queued leaves the mark, and a sweep queues it even when the upstream never posts the callback again.
    if deps.inbox.save_inbound(stored, notify_due=deps.clock() + deps.notify_sweep_delay):
        queue_inbound_notification(stored, deps.inbox, deps.publish)
        _apply_pending_keyword(stored, deps)
        return InboundOutcome(routed=True, stored=True, inbound=stored)
    # The upstream retries when it did not get our answer: perhaps the notification was never queued, or the keyword
    # never applied, or only the answer was lost (a timeout). Queue the stored one again only while its not-queued
    # mark stays (the first callback failed before queueing it, or is queueing it now: the copy keeps its
    # webhook-id, so a client that has it drops it); once queued, it is forwarded once. A pending keyword is applied.
    found = (
        deps.inbox.find_inbound(sms.upstream, sms.upstream_message_id, stored.account_id, stored.to)
        if sms.upstream_message_id
        else None
    )
    logger.info(
        "duplicate inbound callback: stored once",
        extra={"upstream_message_id": sms.upstream_message_id, "queued_again": bool(found and found.not_queued)},
    )
    if found is None:
        return InboundOutcome(routed=True, stored=False)
    if found.not_queued:
        queue_inbound_notification(found.inbound, deps.inbox, deps.publish)
    _apply_pending_keyword(found.inbound, deps)
    return InboundOutcome(routed=True, stored=False, inbound=found.inbound)


def _no_longer_than_an_sms(sms: InboundSms) -> InboundSms:
    """`sms`, refused (400, nothing stored) when its text is longer than any SMS carries (MOST_SMS_UNITS: 255 parts of
    GSM-7), whatever its upstream: no handset sent it, and its notification would not fit where it goes. Queued as
    JSON that writes a UTF-16 unit outside ASCII as a 6-byte escape, the longest SMS's notification is about 235 KB,
    within a 256 KiB notify queue and a 400 KB DynamoDB item (the record of its failed delivery); until session 36 an
    upstream's text of any length its 256 KB body held was stored, and then a 45,000-character Cyrillic one failed
    its callback (5xx, on every repeat) and every sweep, and a 70,000-character one, taken by a 1 MiB queue, made a
    failure record DynamoDB refused: the notifier failed it until the DLQ, and the client never saw it listed."""
    units = utf16_units(sms.text)
    if units > MOST_SMS_UNITS:
        raise CallbackRejected(
            f"inbound SMS text of {units} characters: longer than any SMS carries ({MOST_PARTS} parts, at most "
            f"{MOST_SMS_UNITS} characters)"
        )
    return sms


def _with_usable_id(sms: InboundSms) -> InboundSms:
    """`sms`, without its upstream id when that is too long to key its dedup marker (DynamoDB refuses it): taken as
    from an upstream that gives none (stored and forwarded; a retry of its callback would be taken again), never
    lost to a callback failed for ever."""
    if sms.upstream_message_id is None or usable_upstream_id(sms.upstream_message_id):
        return sms
    logger.warning(
        f"inbound SMS with an upstream id over {MAX_UPSTREAM_ID_BYTES} bytes: taken without it",
        extra={"upstream": sms.upstream, "upstream_message_id": sms.upstream_message_id[:64]},
    )
    return sms.model_copy(update={"upstream_message_id": None})


def _recipient_forms(to: str, deps: InboundDependencies) -> tuple[str, ...]:
    """The forms the number an SMS was sent to may be registered (or released) under (`recipient_forms`): as the
    upstream wrote it, then in international form, the last. One longer than any sender (MAX_INBOUND_SENDER) is
    refused, as such a sender is: it can be no number of ours, and DynamoDB refuses a lookup by a key over 2048
    bytes."""
    if len(to) > MAX_INBOUND_SENDER:
        raise CallbackRejected(f"inbound SMS to a number longer than {MAX_INBOUND_SENDER} characters")
    return recipient_forms(to, deps.upstream_country)


def _recipient(forms: tuple[str, ...], deps: InboundDependencies) -> tuple[str, SenderRegistration | None]:
    """The number an SMS was sent to, in the form its account registered it, with its registration
    (`_found_under`). None registered: its international form (a number is registered so, and released so), with
    None."""
    found = _found_under(forms, deps.accounts.sender_registration, lambda registration: registration.account_id, deps)
    return found or (forms[-1], None)


def _found_under(
    forms: tuple[str, ...],
    lookup: Callable[[str], Found | None],
    account_of: Callable[[Found], str],
    deps: InboundDependencies,
) -> tuple[str, Found] | None:
    """The form of the number an SMS was sent to that `lookup` finds (its registration, or the account that released
    it), with what it found: looked up in each of `forms` (`_recipient_forms`), then in the national form of the
    number's own country (an operator may register a long code as its account writes it at home: `08020000011` for
    `2348020000011`). Until session 36 a number registered so got only the SMS an upstream wrote in that same national
    form, and every other was dropped as to a number no account owns; and a STOP to it once released was looked up
    in international form alone, so its opt-out did not reach the number's next owner. A national form is a number
    only in a country: it is taken for this one only when the default country of the account found (`account_of`) or
    the upstream's `country` reads it so, never for another country's number written alike at home (Ghana's
    024 123 4567 is also Australia's 02 4123 4567). None when no form is found."""
    for form in forms:
        found = lookup(form)
        if found is not None:
            return form, found
    international = forms[-1]
    national = national_digits(international)
    found = lookup(national) if national else None
    if national is None or found is None:
        return None
    account = deps.accounts.get_account(account_of(found))
    countries = {account.default_country if account is not None else None, deps.upstream_country}
    if any(country and read_in_country(national, country) == international for country in countries):
        return national, found
    return None


def _apply_keyword_to_released_sender(
    upstream: str, sms: InboundSms, forms: tuple[str, ...], deps: InboundDependencies
) -> None:
    """A STOP / START to a number no account holds but one released (remove-sender, its next add-sender still to
    come) changes that account's opt-out of it, which add-sender carries to the next owner: the number keeps what
    the handset said during the gap. Nothing is stored or forwarded (the SMS is nobody's), so it is applied here,
    synchronously: a failure fails the callback and the upstream's retry applies it (or, the number given to an
    account meanwhile, is routed to it). Taken only from an upstream the releasing account's routes name, as for a
    number of its own following them; any other SMS, or none released, stays dropped. The number is looked up in
    each form it may have been registered in (`forms`, `_found_under`), as one an account holds is."""
    if deps.opt_outs is None or keyword_request(sms.text, sms.to) is None:
        return
    released = _found_under(forms, deps.opt_outs.sender_released_by, lambda account_id: account_id, deps)
    if released is None:
        return
    to, released_by = released
    # The keyword as to the number in the form it was released in: the one its opt-out is kept and carried under.
    sms = sms.model_copy(update={"to": to})
    request = keyword_request(sms.text, sms.to)
    if request is None:
        return
    if upstream not in deps.routes().upstreams_for_account(released_by):
        logger.warning(
            "opt-out keyword to a released number from an upstream its releasing account's routes do not name: "
            "not applied",
            extra={"upstream": upstream, "to": sms.to, "from": mask_msisdn(sms.msisdn), "released_by": released_by},
        )
        return
    number = _sender(sms.msisdn, released_by, deps)
    if isinstance(number, str):
        return  # a sender ID or short code cannot be texted: its keywords change no opt-out
    try:
        action = apply_keyword_to_released_sender(
            deps.opt_outs, released_by, request, msisdn=number.e164, to=sms.to, now=deps.clock()
        )
    except Exception:
        logger.exception(
            "opt-out keyword to a released number not applied yet; failing the callback so the upstream retries it",
            extra={"from": mask_msisdn(number.e164), "to": sms.to, "released_by": released_by},
        )
        raise
    logger.info(
        "opt-out keyword to a released number applied to the account that released it, for its next owner",
        extra={"from": mask_msisdn(number.e164), "to": sms.to, "released_by": released_by, "action": action},
    )


def queue_inbound_notification(
    inbound: StoredInbound, inbox: InboxStore, publish: Callable[[dict[str, Any]], None]
) -> None:
    """Queues the SMS's notification, then clears its not-queued mark (a failure to queue keeps it for the sweep)."""
    publish(inbound_notification(inbound))
    inbox.inbound_notified(inbound)


def _apply_pending_keyword(inbound: StoredInbound, deps: InboundDependencies) -> None:
    """STOP / START keywords change the account's opt-outs (the SMS is forwarded like any other, first). Until
    that change is recorded the stored SMS says `keyword_pending`, and a failure here fails the callback: the
    upstream's retry is a duplicate, which applies the keyword still pending. An upstream that does not retry a
    failed callback (Twilio, Kannel by default) leaves it to the notifier, whose notification of this SMS says the
    keyword is pending (apply_keyword_still_pending). Once recorded, a repeat of the callback (after a later START,
    say) applies nothing."""
    if not inbound.keyword_pending or deps.opt_outs is None:
        return
    try:
        _apply_unless_superseded(inbound, deps.inbox, deps.opt_outs, deps.clock())
    except Exception:
        logger.exception(
            "opt-out keyword not applied yet; failing the callback so the upstream retries it (and the notifier "
            "applies it with the SMS's notification)",
            extra={"from": mask_msisdn(inbound.msisdn), "to": inbound.to},
        )
        raise
    deps.inbox.keyword_applied(inbound)


def apply_keyword_still_pending(
    notification: dict[str, Any], inbox: InboxStore, opt_outs: OptOutStore, now: datetime
) -> bool:
    """For the notifier: the STOP / START of the inbound SMS a notification forwards, when its callback could not
    record it and the stored SMS still says `keyword_pending` (read consistently: applied since, by the callback or
    its retry, it is not applied again, so an old STOP cannot undo a later START). True when it applied it; a
    failure raises, and the notification's record comes back to try again (SQS), whatever the client's webhook does."""
    inbound_id = notification.get("keyword_pending")
    if notification.get("kind") != INBOUND or not isinstance(inbound_id, int):
        return False
    inbound = inbox.get_inbound(str(notification["account_id"]), inbound_id)
    if inbound is None or not inbound.keyword_pending:
        return False
    applied = _apply_unless_superseded(inbound, inbox, opt_outs, now)
    # Cleared superseded too: decided by a later keyword, it is no longer pending (each retry would look again).
    inbox.keyword_applied(inbound)
    if not applied:
        return False
    logger.warning(
        "opt-out keyword applied by the notifier: its callback failed and was not retried",
        extra={"from": mask_msisdn(inbound.msisdn), "to": inbound.to},
    )
    return True


# Pages of the number's later SMS read to find the keywords that decide a pending one (each page evaluates at most
# about 1,000 of the account's inbound SMS): bounded, so a keyword applied late on a very busy inbox may not see one.
_LATER_SMS_PAGES = 20


def _apply_unless_superseded(inbound: StoredInbound, inbox: InboxStore, opt_outs: OptOutStore, now: datetime) -> bool:
    """Applies a pending STOP / START to the opt-out records no later keyword of the number wrote (records_of: a STOP
    its sender's, a STOPALL the every-sender one, a START both): what the number said last decides each record, so
    a STOP applied late (its callback's retry, or the notifier) cannot undo the START that followed it, nor a late
    START the STOP after it. True when it wrote anything."""
    request = keyword_request(inbound.text, inbound.to)
    if request is None:
        return False
    left = set(records_of(request))
    since = datetime.fromtimestamp(id_time_ms(inbound.inbound_id) / 1000, UTC)
    cursor: str | None = None
    for _ in range(_LATER_SMS_PAGES):
        later, cursor = inbox.list_inbounds(inbound.account_id, since=since, msisdn=inbound.msisdn, cursor=cursor)
        for sms in later:
            other = keyword_request(sms.text, sms.to) if sms.inbound_id > inbound.inbound_id else None
            if other is not None:
                left -= records_of(other)
        if not left or cursor is None:
            break
    if not left:
        logger.info(
            "pending keyword superseded by later ones from the number: not applied",
            extra={"from": mask_msisdn(inbound.msisdn), "to": inbound.to, "keyword": request.keyword},
        )
        return False
    apply_keyword(opt_outs, inbound, now, only=frozenset(left))
    return True


def _sender(raw: str, account_id: str, deps: InboundDependencies) -> Msisdn | str:
    """The handset's number, read as the client's own numbers are (parse_msisdn): international with '+' or `00`;
    bare digits international when they start with the country's calling code (as upstreams mostly give it), else
    in its national form (an SMSC passing `08020000000`, or a US `6465550123`, through as the handset sent it), each
    reading falling back to the other. The country is the upstream's own (`upstream_country`), whose network wrote
    the number, else the account's default: until 2026-12-07 always the account's, so a Nigerian SMSC's
    `08031234567` to an account sending mostly to Ghana was stored from a sender that is no number, its STOP lost.
    Bare digits are never read as international first: a 10-digit US number is often a valid number elsewhere
    (+65 6555 0123), and the STOP it sent would be recorded for that one. The inbox's number filter reads a number
    the same way, so a number is the same everywhere.

    A sender that is no phone number (a service's sender ID, `WhatsApp`; a carrier's short code, `131`) is the
    sender as the upstream gave it, trimmed: the SMS was sent to the account's number all the same, and may be the
    very code the client waits for. Only what cannot be a sender at all (domain/senders.inbound_sender) is refused;
    until 2026-12-07 any sender that was not a valid number was, and the SMS lost."""
    try:
        sender = inbound_sender(raw)
    except ValueError as error:
        raise CallbackRejected(f"inbound SMS from {error}") from None
    country = deps.upstream_country or "NG"
    if deps.upstream_country is None and not sender.startswith(("+", "00")):
        account = deps.accounts.get_account(account_id)
        country = account.default_country if account is not None else country
    try:
        return parse_msisdn(sender, country)
    except InvalidMsisdn:
        return sender


def _last_sent_to(conversations: ConversationLookup, account_id: str, number: Msisdn, to: str) -> SentMessage | None:
    """The message a reply from `number` to `to` answers; None, a new conversation, when the lookup fails (a
    throttled read): the SMS is stored all the same. Failing the callback instead would lose it, a STOP included,
    for an upstream that does not post a failed callback again (Twilio, Kannel by default). A re-post of an SMS
    already stored is stored once and forwarded as first stored, whatever its own lookup found."""
    try:
        return conversations.last_sent_to(account_id, number.e164, to)
    except Exception:
        logger.warning(
            "reply-threading lookup failed: the inbound SMS is stored as a new conversation",
            exc_info=True,
            extra={"from": mask_msisdn(number.e164), "to": to, "account_id": account_id},
        )
        return None


def _stored(
    sms: InboundSms,
    account_id: str,
    sender: Msisdn | str,
    conversations: ConversationLookup | None,
    *,
    applies_keywords: bool,
) -> StoredInbound:
    """The SMS as stored: `keyword_pending` when it is a STOP / START whose opt-out change is still to be made, where
    keywords are applied at all (`applies_keywords`). A sender that is no number (`_sender`) is stored as given,
    with no telco, and neither threads onto a conversation nor applies a keyword: it cannot be texted back."""
    number = sender if isinstance(sender, Msisdn) else None
    msisdn = sender.e164 if isinstance(sender, Msisdn) else sender
    logger.info("inbound SMS", extra={"from": mask_msisdn(msisdn), "to": sms.to})
    inbound_id = new_id()
    # A reply continues the conversation of the last message the account sent to that number: its session_id
    # and ref_id are carried over so the client can thread it. A new conversation is in the upstream's session when it
    # keeps sessions (9bits: a reply naming it continues it there), else in one of its own.
    # Only a message from the number the reply was sent to: an OTP from another shortcode is another conversation.
    last = (
        _last_sent_to(conversations, account_id, number, sms.to)
        if conversations is not None and number is not None
        else None
    )
    return StoredInbound(
        inbound_id=inbound_id,
        account_id=account_id,
        upstream=sms.upstream,
        upstream_message_id=sms.upstream_message_id,
        msisdn=msisdn,
        # The number plan's telco, the one every report names; the upstream's where the plan cannot place the number.
        telco=(number.telco or sms.telco) if number is not None else None,
        to=sms.to,
        text=sms.text,
        session_id=(last.session_id if last else None) or sms.session_id or str(inbound_id),
        ref_id=last.ref_id if last else None,
        in_reply_to=last.key.message_id if last else None,
        keyword_pending=applies_keywords and number is not None and keyword_request(sms.text, sms.to) is not None,
        received_at=sms.received_at,
    )

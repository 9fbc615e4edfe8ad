"""The gateway's records: accounts, batches, messages, and the commands and reports that move them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from sms_gateway.domain.dates import upstream_moment
from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.status import MessageStatus
from sms_gateway.domain.webhooks import SECRET_PREFIX


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """Timestamps travel as ISO 8601 UTC with microseconds and a Z, as the 9bits seed writes `sent_date`. The year
    always in four digits: strftime's %Y writes year 1 as `1` on Linux, and until session 36 an upstream's time of a
    year before 1000 reached clients as `1-01-01T00:00:00.000000Z`, which no seed-format parser reads."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


# The longest session_id a client may send (the 9bits dialect's send): an upstream's session longer than that could
# not be named back in a reply, so a new conversation gets a session of ours instead.
MAX_SESSION_ID_LENGTH = 128


def upstream_time(value: object) -> str | None:
    """An upstream's time in the one form every time reaches clients in (`iso`: the seed's
    `2024-01-02T23:50:37.000000Z`), whatever the upstream wrote (milliseconds, an offset, Unix time); None when it
    wrote none, or nothing that names a moment. Until session 35 the 9bits upstream's and the simulator's times were
    passed on as written, and a client parsing them with the seed's format failed."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    moment = upstream_moment(str(value))
    return iso(moment) if moment is not None else None


def _received_at(value: object) -> str:
    # An SMS whose upstream gave no time it was sent, or none that can be read, was sent about when it came.
    return upstream_time(value) or iso(utc_now())


def from_iso(stamp: str) -> datetime:
    """The moment an `iso` timestamp names (Python 3.11 does not read the trailing Z itself)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# How long a message may wait to go out (settings.message_validity_hours by default in the functions).
DEFAULT_VALIDITY = timedelta(hours=24)


def goes_out_at(*, created_at: str, send_at: str | None) -> datetime:
    """When a batch is due to go out: its send time, never before it was accepted (max(send_at, created_at)); when
    it was accepted for a batch sent at once."""
    return max(from_iso(send_at), from_iso(created_at)) if send_at else from_iso(created_at)


# How long after it is due a scheduled batch that is still `scheduled` is released by the sweeper (logic/sweep.py)
# instead of its schedule: one killed with its api Lambda before the schedule was made has none, and nothing else
# would ever send it. The schedule fires within a minute of its time (adapters/scheduler.py: due rounded up to the
# minute, and at least a minute after it was made, so at most about 3 minutes after `goes_out_at`), and Lambda tries a
# release that raises twice more (about 1 then 2 minutes apart, each run at most the function's 120 s): a schedule
# that fires at all has released its batch some 10 minutes after it was due. 15 minutes leaves those their turn, so
# the sweeper meets only batches whose schedule did not release them, and stays well inside the hour Scheduler keeps
# retrying an invoke Lambda refuses (the schedule's RetryPolicy, MaximumEventAgeInSeconds 3600): past that hour the
# schedule has given up into its DLQ, and a margin that long would only keep a batch with no schedule that much
# later. The sweeper's release and a late firing are the same idempotent release, so whichever comes second changes
# nothing.
SCHEDULED_RELEASE_SWEEP_MARGIN = timedelta(minutes=15)


# Sends of at least this many recipients to go out at once are in `sweep-index` until their dispatch records are
# queued: one killed with its api Lambda between storing its batch and queueing its records (no undo runs) is released
# by the sweeper instead of staying charged and unsent. A request more per such send (the api's write that takes it
# out of the index once queued), at most 0.01 a message; sends of fewer go without (an OTP lost so is asked for again
# by its user; a campaign's batch of up to 1000 messages is noticed by nobody). docs/decisions.md, option A100.
RELEASE_SWEEP_MIN_RECIPIENTS = 100

# How long after it was accepted such a send still in the index is released by the sweeper. Longer than the api's
# Timeout (29 s, template.yaml): an api invocation that accepted it has queued its records and taken it out of the
# index by then, or is dead, so the sweeper never races a live publish. Short enough that its messages go out a few
# minutes late (the sweeper runs every 2 minutes: 2 to 4 minutes after the send, and its asynchronous release a moment
# later), far inside their validity (DEFAULT_VALIDITY, 24 h); and, when the api did queue them and only its write
# that takes the batch out of the index failed, mostly inside the 5 minutes in which the FIFO dispatch queue drops the
# release's records as repeats of the api's (the same deduplication ids: adapters/sqs.dispatch_dedup_id). Either way
# the release queues only messages still `queued`, and the dispatcher's claim sends none twice.
UNQUEUED_RELEASE_SWEEP_MARGIN = timedelta(minutes=2)


def swept_until_queued(batch: Batch) -> bool:
    """Whether `batch`, to go out at once, is written in `sweep-index` and stays there until its records are queued
    (RELEASE_SWEEP_MIN_RECIPIENTS)."""
    return batch.status == MessageStatus.QUEUED and batch.recipients >= RELEASE_SWEEP_MIN_RECIPIENTS


def unqueued_release_sweep_due(batch: Batch) -> datetime:
    """When the sweeper may release `batch`, to go out at once, whose records are not known to be queued: a live api
    has published them or died by then."""
    return from_iso(batch.created_at) + UNQUEUED_RELEASE_SWEEP_MARGIN


def release_sweep_due(batch: Batch) -> datetime | None:
    """When the sweeper may release `batch`, written now, if it is still unreleased then: a scheduled batch still
    `scheduled` SCHEDULED_RELEASE_SWEEP_MARGIN after it was due; a send to go out at once of 100 recipients or more
    (swept_until_queued) whose records are not known to be queued UNQUEUED_RELEASE_SWEEP_MARGIN after it was
    accepted. None for a batch the sweeper never releases."""
    if swept_until_queued(batch):
        return unqueued_release_sweep_due(batch)
    if batch.status != MessageStatus.SCHEDULED or batch.send_at is None:
        return None
    return goes_out_at(created_at=batch.created_at, send_at=batch.send_at) + SCHEDULED_RELEASE_SWEEP_MARGIN


def validity_ends(*, created_at: str, send_at: str | None, queued_at: str | None, validity: timedelta) -> datetime:
    """When a message is too late to send, and is expired and refunded instead: `validity` after its batch's send
    time when it has one (goes_out_at), so a scheduled batch released late (its schedule's release replayed from
    the schedule DLQ days after) never goes out that late; else after it was queued. The release (logic.scheduled)
    and the dispatcher (logic.dispatch) both judge by this."""
    start = goes_out_at(created_at=created_at, send_at=send_at) if send_at else from_iso(queued_at or created_at)
    return start + validity


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


class DeliveryReportMode(StrEnum):
    NONE = "none"
    YES = "yes"


class SealedSecret(Record):
    """A secret we present rather than check (the webhook token, the signing secret), as stored. `sealed` is the
    base64 of what the key service (ports.SecretBox) opens; `prefix` is its first characters, to tell secrets apart.
    Scheme "plain": an item written before sealing, whose `sealed` is the secret itself (docs/security.md)."""

    scheme: Literal["kms", "plain"] = "kms"
    sealed: str
    prefix: str


# The characters of a secret that may be shown again after it was issued (a Standard Webhooks `whsec_` prefix is
# not counted): enough to tell two apart, far too few to guess the rest.
SHOWN_PREFIX_LENGTH = 8


def shown_prefix(secret: str) -> str:
    shown = SHOWN_PREFIX_LENGTH + (len(SECRET_PREFIX) if secret.startswith(SECRET_PREFIX) else 0)
    return secret[:shown]


class Account(Record):
    account_id: str
    name: str
    credits: int = 0
    default_country: str = "NG"
    timezone: str = "Africa/Lagos"
    senders: tuple[str, ...] = ()
    partner_id: str = ""
    dlr_url: str | None = None
    inbound_url: str | None = None
    # Clients authenticate our webhook calls with this token as a Bearer header, as the seeds show.
    webhook_token: SealedSecret | None = None
    # Signs every client webhook (Standard Webhooks). Both are sealed: only the key service opens them.
    webhook_secret: SealedSecret | None = None
    rate_limit_per_second: int = 50
    # A message longer than this many parts is refused: it protects clients from a runaway template.
    max_parts: int = 10
    # Whether the account's single sends (its OTPs) reach the upstream in the order they were accepted: one after
    # another, each after the answer to the one before (about one per upstream answer). False: each single send
    # has a dispatch lane of its own and they go out alongside each other, in any order (docs/dispatch.md).
    single_sends_in_order: bool = True
    created_at: str = ""
    # Active opt-outs (STOP) of the account's numbers, kept exact by the opt-out writes' transactions: a send
    # for an account with none skips the opt-out lookup (docs/opt-outs.md).
    opt_outs: int = 0
    # Set by a password reset (admin reset-password): the time of the reset, which ends the sessions opened before
    # sessions carried a password epoch (2026-12-06). None: the password was never reset.
    sessions_valid_from: datetime | None = None
    # The version of the /login password: a reset sets a new random one here and on the login item, in one
    # transaction, and a session (session-key or portal) whose login read another one is refused. "": the password
    # the account was created with (its login item has no epoch either).
    password_epoch: str = ""
    # When the webhooks (a URL, the token or the signing secret) last changed, and by what: "portal", "operator"
    # (admin set-webhooks) or the API credential used ("token <prefix>"). None: never, or before this was recorded.
    webhooks_changed_at: datetime | None = None
    webhooks_changed_by: str | None = None
    # Written by the first build of 2026-12-06 instead, for the portal's changes only (read as changed_by "portal").
    webhooks_changed_in_portal_at: datetime | None = None

    @field_validator("webhook_token", "webhook_secret", mode="before")
    @classmethod
    def _written_before_sealing(cls, value: Any) -> Any:
        # Items written before the credentials were sealed hold them as plain strings.
        if isinstance(value, str):
            return SealedSecret(scheme="plain", sealed=value, prefix=shown_prefix(value)) if value else None
        return value

    @property
    def default_sender(self) -> str | None:
        return self.senders[0] if self.senders else None

    @property
    def default_delivery_report(self) -> DeliveryReportMode:
        """What a send asks for whose dialect has no delivery-report flag (the portal, shortcode, session-key):
        reports to the account's DLR URL when it has one."""
        return DeliveryReportMode.YES if self.dlr_url else DeliveryReportMode.NONE


class SenderRegistration(Record):
    """The account a sender ID, shortcode or long number is registered to, and the upstreams that may deliver the
    inbound SMS sent to it: None, those the account's routes name (RouteTable.upstreams_for_account); set, exactly
    these (an upstream that carries only the number's inbound SMS must be named)."""

    account_id: str
    inbound_upstreams: tuple[str, ...] | None = None

    def inbound_upstreams_with(self, routed: frozenset[str]) -> frozenset[str]:
        """The upstreams its inbound SMS is taken from, given those the account's routes name."""
        return routed if self.inbound_upstreams is None else frozenset(self.inbound_upstreams)


class Recipient(Record):
    """A recipient after normalisation: E.164 number and its network."""

    msisdn: str
    telco: str | None = None
    network_id: int = 0
    # ISO 3166 region of the number (prices may differ by country for one network slug); None when not known.
    country: str | None = None


class SendCommand(Record):
    """What every dialect's send request translates to."""

    account_id: str
    sender: str
    text: str
    recipients: tuple[Recipient, ...] = Field(min_length=1)
    session_id: str | None = None
    ref_id: str | None = None
    sent_date: str | None = None
    delivery_report: DeliveryReportMode = DeliveryReportMode.NONE
    callback_url: str | None = None
    send_at: datetime | None = None
    route_tier: str = "N"
    dialect: str = "9bits"


class Batch(Record):
    reference_id: int
    account_id: str
    sender: str
    text: str
    encoding: str
    parts: int
    recipients: int
    cost: int = 0
    status: MessageStatus
    delivery_report: DeliveryReportMode = DeliveryReportMode.NONE
    callback_url: str | None = None
    session_id: str | None = None
    ref_id: str | None = None
    # The client's own date for the send (9bits `sent_date`): stored and given back, never read.
    sent_date: str | None = None
    route_tier: str = "N"
    dialect: str = "9bits"
    created_at: str
    send_at: str | None = None
    # Set on a failed (undone) batch when a retry under the same idempotency key sent afresh as this batch: the
    # key names the first batch, and a later retry follows these links to the send that stands (logic.send).
    superseded_by: int | None = None
    # The mark of the idempotency key the batch was sent under (KeyClaim.mark), in the write that creates it; None
    # without a key. A retry under a key finishes a batch only when it carries the key's mark (logic.send).
    key_mark: str | None = None
    # Counts the writes that changed the batch's cost or added messages to it (MessageStore.reprice_batch,
    # store_and_charge): a write of its cost decided on a read of its messages holds only while this is as read, so
    # a retry's messages stored after that read are never given back uncharged (0: none yet, or a batch written
    # before 2026-12-07).
    revision: int = 0
    # On a cancelled batch: the credits its cancel gave back for messages never stored (the net of its give-backs,
    # logic.batches.cost_to_stored), added in the same transactions; what a killed send, the undo of its refused
    # retry or the sweeper's release gave back is not the cancel's (0: none, or a batch cancelled before 2026-12-08).
    cancel_unstored_refund: int = 0


class BatchKey(Record):
    """Locates a batch: its account and reference id."""

    account_id: str
    reference_id: int


class UnreleasedBatch(BatchKey):
    """A batch the sweeper claimed to release: `scheduled` (its schedule never released it) or `queued` (a send to go
    out at once whose records are not known to be queued), as its sweep-index entry says."""

    status: MessageStatus


# The digits of one id of a client reference of ours: ids are 63-bit, 19 digits at most (`MessageKey.from_ref` reads
# up to 20); one longer is no reference of ours.
MAX_REF_ID_DIGITS = 20
# The longest client reference we give upstreams (`MessageKey.to_ref`: three ids, two dots).
MAX_CLIENT_REF_LENGTH = 3 * MAX_REF_ID_DIGITS + 2


class MessageKey(Record):
    """Locates a message without an index. Rendered as the client reference we give upstreams,
    so that a DLR that echoes it finds the message with one key lookup."""

    account_id: str
    reference_id: int
    message_id: int

    def to_ref(self) -> str:
        return f"{self.account_id}.{self.reference_id}.{self.message_id}"

    @classmethod
    def from_ref(cls, ref: str | None) -> MessageKey | None:
        parts = (ref or "").split(".")
        # Ids are 63-bit (19 digits at most); a longer one is no key of ours, and int() refuses past 4300 digits.
        if len(parts) != 3 or not all(ascii_digits(p) and len(p) <= MAX_REF_ID_DIGITS for p in parts):
            return None
        return cls(account_id=parts[0], reference_id=int(parts[1]), message_id=int(parts[2]))

    @classmethod
    def of_batch(cls, account_id: str, reference_id: int, message_ids: Sequence[int]) -> list[MessageKey]:
        """The keys of a batch's messages `message_ids`, in that order."""
        return [cls(account_id=account_id, reference_id=reference_id, message_id=i) for i in message_ids]


class Message(Record):
    message_id: int
    reference_id: int
    account_id: str
    msisdn: str
    telco: str | None = None
    network_id: int = 0
    sender: str
    text: str
    encoding: str
    parts: int
    price: int = 0
    status: MessageStatus
    status_at: dict[str, str] = Field(default_factory=dict)
    # Counts status changes so DLR callbacks can be ordered by the client.
    sequence: int = 0
    session_id: str | None = None
    ref_id: str | None = None
    sent_date: str | None = None
    delivery_report: DeliveryReportMode = DeliveryReportMode.NONE
    # The batch's own delivery-report URL, when it gave one instead of the account's.
    callback_url: str | None = None
    upstream: str | None = None
    upstream_message_id: str | None = None
    error_code: str | None = None
    reported_at: str | None = None
    # Multi-part messages: the latest status each part's DLR reported, by part number ("1", "2", ...).
    part_status: dict[str, str] = Field(default_factory=dict)
    # What the last interim report that spoke of it said the message becomes if no final report comes within the
    # DLR wait (DeliveryReport.settles_as): delivered after an SMSC's ACCEPTD. Written by that report's own write;
    # the settle check reads it (logic/settle.py). Removed by the write of any final status but the check's own
    # delivery on it, which keeps it (so the check tells that change from a final report's).
    settles_as: MessageStatus | None = None
    # Submits no upstream took for a transient reason, counted when the claim is released: the message's own
    # attempts, whatever how often its dispatch record was handed back for want of time or rate (logic/dispatch.py).
    submit_attempts: int = 0
    # Submits the upstream throttled (it asked us to slow down): no attempt, but the wait before the next one grows
    # with them, so a message throttled for hours comes back a few dozen times within its validity, not thousands.
    submit_throttles: int = 0
    # The upstream that may already have the message: an earlier submit there got no answer after the request
    # left. Only it is offered the message again (it deduplicates by our reference), and a last attempt that fails
    # leaves the message submitted-unconfirmed rather than failed (logic/dispatch.py).
    maybe_taken_by: str | None = None
    # The `sequence` of a final change whose client notification the notify queue refused (the webhook callback
    # that applied it answered 5xx): the sweeper announces it again minutes later and clears this, or the message's
    # settle check if it comes first (logic/delivery.announce_change, logic/sweep.py, logic/settle.py). Never set
    # when the notification went out.
    announce_pending: int | None = None
    # The `sequence` of the final change whose announcement an upstream's repeat of its report claimed (one
    # conditional write by that repeat, which then queues it again), or whose `announce_pending` was cleared once it
    # went out: a later repeat queues nothing. Not written by the report that made the change (its status write is
    # its one write): a client hears of a final change at most twice from the upstream's repeats, under the same
    # webhook id (logic/delivery.announce_change; docs/decisions.md, "A repeated final DLR: the repeat pays").
    announced: int | None = None
    created_at: str
    # The batch's send time, when it asked for one: the message's validity counts from it (validity_ends). Absent on
    # messages stored before 2026-12-06 and on those of batches sent at once.
    send_at: str | None = None

    @property
    def key(self) -> MessageKey:
        return MessageKey(account_id=self.account_id, reference_id=self.reference_id, message_id=self.message_id)

    @property
    def can_be_replied_to(self) -> bool:
        """A handset can answer a number (long number, shortcode) but not an alphanumeric sender ID: only messages
        from a number can start a conversation a reply continues."""
        return sender_accepts_replies(self.sender)


def sender_accepts_replies(sender: str) -> bool:
    """False for an alphanumeric sender ID (any letter): a handset has no number to reply to."""
    return not any(character.isalpha() for character in sender)


class SentMessage(Record):
    """The part of a sent message a reply needs to continue its conversation."""

    key: MessageKey
    sender: str | None = None
    session_id: str | None = None
    ref_id: str | None = None


def reply_order(status_at: Mapping[str, str], message_id: int) -> tuple[datetime, int]:
    """How a reply ranks the messages its number may have got (the highest is the one it answers): the message an
    upstream took last (`status_at.submitted`) is the last one the handset got, though a message scheduled earlier
    and released later was created before a one-off sent in between. One with no submit time (its report came
    before its submit was recorded) comes after every one that has one; among those, the newest created."""
    submitted = status_at.get(str(MessageStatus.SUBMITTED))
    return (from_iso(submitted) if submitted else datetime.min.replace(tzinfo=UTC), message_id)


class DispatchCommand(Record):
    """One SQS record on the dispatch queue: up to 100 messages of one batch."""

    account_id: str
    reference_id: int
    message_ids: tuple[int, ...] = Field(min_length=1, max_length=100)
    # A single-recipient send (an OTP): queued in the account's priority lane, ahead of its bulk batches.
    priority: bool = False
    # False: a single send of an account whose single sends need no order (`Account.single_sends_in_order`): a
    # lane of its own, so it goes out alongside the account's other single sends instead of after them.
    in_order: bool = True


class SubmitRequest(Record):
    client_ref: str
    sender: str
    msisdn: str
    text: str
    dlr_url: str | None = None
    # The client's session (the message's session_id): an upstream that keeps sessions (9bits) continues the one a
    # reply names, rather than starting another.
    session_id: str | None = None
    # Minutes the upstream may keep trying to deliver: what is left of the message's validity when it is submitted,
    # so an SMSC gives up (and reports it expired) long before the gateway's DLR wait ends. None: the upstream's own.
    validity_minutes: int | None = None


class SubmitResult(Record):
    upstream_message_id: str


# The longest upstream message id the gateway takes (UTF-8 bytes). Upstreams' ids are short (an SMPP message_id is at
# most 64 characters, a Twilio SID 34, a UUID 36); one is part of DynamoDB keys (an upstream link, an inbound SMS's
# dedup marker), which DynamoDB refuses over 2048 bytes, on reads as on writes (a 5xx, retried for ever).
MAX_UPSTREAM_ID_BYTES = 256


def usable_upstream_id(upstream_message_id: str) -> bool:
    """Whether an upstream's id for a message fits where the gateway keeps it (MAX_UPSTREAM_ID_BYTES)."""
    return len(upstream_message_id.encode()) <= MAX_UPSTREAM_ID_BYTES


# An SMPP message_id is at most 64 characters (a 65-octet C-Octet String).
MAX_PART_ID_LENGTH = 64
PartKey = Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1, max_length=MAX_PART_ID_LENGTH)]


# The longest error code an upstream's report leaves on a message (AT's `UserInBlacklist`, Jasmin's `ESME_RINVDSTADR`,
# Kannel's `0x0000000b`, Twilio's `30003` are far shorter): stored on the message and its held reports, and forwarded
# to the client, cut to this. Until session 36 any length was: an upstream's 100 KB `failureReason` was stored and
# forwarded whole, and a few held on one message id made its item too large for DynamoDB (its DLRs then failed 5xx,
# and were posted again for ever).
MAX_ERROR_CODE_LENGTH = 64


def _error_code(value: object) -> object:
    return value[:MAX_ERROR_CODE_LENGTH] if isinstance(value, str) else value


def _client_ref(value: object) -> object:
    return None if isinstance(value, str) and len(value) > MAX_CLIENT_REF_LENGTH else value


class DeliveryReport(Record):
    """A DLR as an upstream told it, mapped to our status model."""

    upstream: str
    upstream_message_id: str | None = None
    # The reference of ours it names; one longer than any we give (MAX_CLIENT_REF_LENGTH) names none, and is not
    # kept: a report held on the upstream's id is stored whole, and until session 36 a few 100 KB references filled
    # the link item past DynamoDB's 400 KB, every later report for that id failing with a 5xx, posted again for ever.
    client_ref: Annotated[str | None, BeforeValidator(_client_ref)] = None
    status: MessageStatus
    # The upstream's, cut to MAX_ERROR_CODE_LENGTH.
    error_code: Annotated[str | None, BeforeValidator(_error_code)] = None
    # Every adapter's time, normalised here once: what it wrote is only a hint of the form.
    reported_at: Annotated[str | None, BeforeValidator(upstream_time)] = None
    # Set when the upstream reports each part of a multi-part message on its own: the part's number (1-based), or
    # the upstream's own id for that part, one key of `part_status`.
    part: PartKey | None = None
    # An interim report's word on how the message ends if no final report follows within the DLR wait (an SMSC's
    # ACCEPTD: delivered; UNKNOWN: expired, as with no report); None: it says nothing of it (adapters/providers/
    # receipts.py).
    settles_as: MessageStatus | None = None


class StatusChange(Record):
    """What a status write did: the message as it is now, and whether this write moved it."""

    message: Message
    changed: bool


class CallbackRequest(Record):
    """An upstream's HTTP callback as the webhook received it (header names lowercased)."""

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: str = ""


class CredentialKind(StrEnum):
    TOKEN = "token"  # noqa: S105 # 9bits and batches: Authorization: Bearer
    APIKEY = "apikey"  # shortcode: apikey + partnerID
    SESSION = "session"  # session-key dialect: user_key + Session_key after /login


class Credentials(Record):
    """Secrets as issued to a client, shown once; the store keeps only their hashes."""

    token: str
    apikey: str
    partner_id: str
    username: str
    password: str


# The longest network name an upstream's inbound SMS may give (9bits `telco`: `mtn`, `Verizon Wireless`): a longer one
# names no network and is not taken, the SMS taken without it. Until session 36 any length was stored and forwarded.
MAX_TELCO_LENGTH = 64


class InboundSms(Record):
    """A mobile-originated SMS as an upstream delivered it."""

    upstream: str
    upstream_message_id: str | None = None
    msisdn: str  # the sender's number, E.164
    to: str  # our shortcode or long number it was sent to
    text: str
    # The time the upstream says it was sent, in our one form (`upstream_time`); when it came if it says none.
    received_at: Annotated[str, BeforeValidator(_received_at)]
    # What an upstream that keeps sessions (9bits) says of it: its session, which a reply must name for the upstream to
    # continue it (a new conversation takes it, logic/inbound.py), and the sender's network.
    session_id: str | None = None
    telco: str | None = None

    @field_validator("session_id")
    @classmethod
    def _one_a_reply_can_name(cls, value: str | None) -> str | None:
        return value if value and len(value) <= MAX_SESSION_ID_LENGTH else None

    @field_validator("telco")
    @classmethod
    def _a_network_s_name(cls, value: str | None) -> str | None:
        return value if value and len(value) <= MAX_TELCO_LENGTH else None


class StoredInbound(Record):
    inbound_id: int
    account_id: str
    upstream: str
    upstream_message_id: str | None = None
    msisdn: str
    telco: str | None = None
    to: str
    text: str
    session_id: str
    ref_id: str | None = None
    # The last message the account sent to this number before the reply came: the conversation it continues.
    in_reply_to: int | None = None
    received_at: str
    # A STOP / START whose opt-out change is not recorded yet: a retry of its callback applies it (logic/inbound.py).
    keyword_pending: bool = False


@dataclass(frozen=True)
class FoundInbound:
    """An inbound SMS found by its upstream's message id, and whether it still waits for its notification to be
    queued (stored with the not-queued mark, not cleared yet): only then does a repeat of its callback queue it."""

    inbound: StoredInbound
    not_queued: bool


class StoredAnswer(Record):
    """The first answer to an idempotent request, returned again for its repeats."""

    status_code: int
    body: str
    content_type: str = "application/json"


# How a stored idempotency record's fingerprint was made: 2 since 2026-12-06, when a request's query became the one its
# dialect reads (the shortcode dialect: the raw query read as a form); a record without it was stored by an earlier
# build and hashed API Gateway's queryStringParameters (logic.idempotency.run_once: `unversioned_fingerprint`).
FINGERPRINT_VERSION = 2


@dataclass(frozen=True)
class KeyClaim:
    """An idempotency key this request holds: the batch its send makes is `reference_id`. `resumed` when an earlier
    request under the key died holding it (its lease ran out before it answered): that request may have stored,
    charged or queued batch `reference_id` part-way, and this one finishes that batch instead of making another.
    `mark`: the key's own mark, which the batch it makes carries (Batch.key_mark), so that a resumed request tells its
    key's batch from another send's that took the same id (two new ids met in one millisecond) and never finishes
    that one as its own; None for a key claimed by a build before 2026-12-07 (its batch is taken as the key's)."""

    reference_id: int
    resumed: bool = False
    # Random per key, not part of what the claim says: two claims on one batch compare equal.
    mark: str | None = field(default=None, compare=False)


class SenderRequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class SenderRequest(Record):
    """An account's request for a sender ID or shortcode, which an operator approves (it is then registered to the
    account) or rejects with a reason. One per account and sender; a rejected one may be asked for again, and an
    approved one whose sender the operator released since (remove-sender), which the portal shows as released."""

    account_id: str
    sender: str
    status: SenderRequestStatus = SenderRequestStatus.PENDING
    requested_at: str
    decided_at: str | None = None
    reason: str | None = None


class ClaimOutcome(StrEnum):
    """What a dispatcher gets when it asks to submit a message."""

    CLAIMED = "claimed"  # it is ours to submit
    BUSY = "busy"  # not queued any more: nothing to do
    # Another dispatcher holds a live claim. It may still die before its lease lapses, so the record that found
    # it held comes back later instead of being consumed (consuming it could strand the message queued).
    HELD = "held"
    # A previous dispatcher's claim lapsed without a result, and is now ours: that dispatcher may have died after the
    # upstream accepted the message, so only an upstream that deduplicates by our reference may be asked again
    # (`Claim.lapsed_upstream`); otherwise the message is recorded as submitted, unconfirmed.
    ABANDONED = "abandoned"
    # Still queued and unclaimed, but attempted since the dispatcher read it (another dispatcher, on a duplicate
    # delivery of its record, submitted it and handed it back): what was read of where the message may be
    # (`maybe_taken_by`) may be out of date, so the record comes back to read it again.
    STALE = "stale"


@dataclass(frozen=True)
class Claim:
    """A dispatcher's request for a message's lease, answered."""

    outcome: ClaimOutcome
    # ABANDONED only: the upstream the lapsed claim's holder was submitting to, when its claim named one.
    lapsed_upstream: str | None = None
    # CLAIMED and ABANDONED: the id written with the lease (the store's own, random). The holder's later writes on
    # the lease name it, so that a write DynamoDB applied but whose answer was lost is known for its own when botocore
    # sends it again, and a holder whose lease lapsed and was taken over changes nothing of the new holder's. Not
    # part of what the claim answered (equality): it is the store's own token.
    claim_id: str | None = field(default=None, compare=False)

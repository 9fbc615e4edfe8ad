"""An account's sending history for the portal: recent batches, search, delivery rates and credit usage.

Everything here reads a bounded window of recent batches (newest first) and their messages, never a whole
account: a portal page must answer in a second or two whatever the account's volume. The bounds are named below
and every result says whether a bound cut it short (`complete`), so a page can say so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import Account, Batch, Message, Record, from_iso, goes_out_at
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic.batches import BatchView
from sms_gateway.logic.delivery import REFUNDED
from sms_gateway.ports import BatchHistory, MessageStore, SendTimeEntries

# The window the portal's figures and number search cover: the last 7 days (today and the 6 before it), at most
# 100 batches and 2000 of their messages (newest first). Beyond that a page says the figures cover only part of
# the period.
WINDOW_DAYS = 7
MAX_WINDOW_BATCHES = 100
MAX_WINDOW_MESSAGES = 2000
# A listed batch's status and counts come from its first 1000 messages (one read); bigger batches say so.
COUNTED_MESSAGES = 1000
# The outcomes a delivery rate counts: delivered against every way a sent message ended undelivered.
# Cancelled messages were never sent, and messages still on their way have no outcome yet.
FINAL_OUTCOMES = (MessageStatus.DELIVERED, MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.REJECTED)
# Messages whose price went back to the account: failed on the way, and cancelled before they left.
REFUNDED_MESSAGES = REFUNDED | {MessageStatus.CANCELLED}
_PAGE = 100
# A window's reads are one partition per batch: this many run at once (boto3 clients are thread-safe).
READ_THREADS = 8


@dataclass(frozen=True)
class Window:
    """The batches made or going out from `since` to `until` (the latest to go out first) and, when read, their
    messages by reference id."""

    since: datetime | None
    until: datetime | None
    batches: list[Batch]
    messages: dict[int, list[Message]] = field(default_factory=dict)
    # The batches whose messages were all read (the others were cut by the bound, or not read).
    whole: frozenset[int] = frozenset()
    # False when a bound stopped the reading: older batches or some messages were left out.
    complete: bool = True

    def all_messages(self) -> Iterable[Message]:
        for batch in self.batches:
            yield from self.messages.get(batch.reference_id, ())

    def sent_messages(self) -> Iterable[Message]:
        """The messages of the batches that go out within the window: not those of a batch made in it to go out
        later, which sent nothing yet."""
        for batch in self.batches:
            if _within(goes_out(batch), self.since, self.until):
                yield from self.messages.get(batch.reference_id, ())


def read_window(
    history: BatchHistory,
    store: MessageStore,
    account_id: str,
    *,
    since: datetime | None,
    until: datetime | None = None,
    with_messages: bool = True,
    max_batches: int = MAX_WINDOW_BATCHES,
    max_messages: int = MAX_WINDOW_MESSAGES,
) -> Window:
    batches, complete = _made_or_going_out(history, account_id, since=since, until=until, max_batches=max_batches)
    if not with_messages:
        return Window(since=since, until=until, batches=batches, complete=complete)
    # Each batch says how many messages it has, so the bound is planned before reading: every batch that fits is
    # read whole, the one that crosses the bound only up to it, the rest not at all. The reads are one partition
    # each, so they run side by side.
    plan: list[tuple[Batch, int]] = []
    left = max_messages
    for batch in batches:
        if left <= 0:
            complete = False
            break
        plan.append((batch, min(batch.recipients, left)))
        if batch.recipients > left:
            complete = False
        left -= batch.recipients
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        found = list(pool.map(lambda planned: _first_messages(store, planned[0], planned[1]), plan))
    messages = {batch.reference_id: read for (batch, _), read in zip(plan, found, strict=True)}
    whole = frozenset(batch.reference_id for batch, wanted in plan if wanted == batch.recipients)
    return Window(since=since, until=until, batches=batches, messages=messages, whole=whole, complete=complete)


def _made_or_going_out(
    history: BatchHistory, account_id: str, *, since: datetime | None, until: datetime | None, max_batches: int
) -> tuple[list[Batch], bool]:
    """Up to `max_batches` batches made or going out from `since` to `until`, the latest to go out first, and
    whether those are all. Made: a key range of the account's batches. Going out: the scheduled batches by their
    send time (`scheduled_batch_ids`), of which only those made outside the range are read (one request): a
    campaign made 10 days ago and sent yesterday is in the week's figures (until session 36 it was in no week's)."""
    made: list[Batch] = []
    cursor: str | None = None
    while len(made) < max_batches:
        page, cursor = history.list_batches(
            account_id, limit=min(_PAGE, max_batches - len(made)), cursor=cursor, since=since, until=until
        )
        made.extend(page)
        if cursor is None:
            break
    scheduled, all_scheduled = history.scheduled_batch_ids(account_id, limit=max_batches, since=since, until=until)
    known = {batch.reference_id for batch in made}
    made_before = history.get_batches(account_id, [ref for ref in scheduled if ref not in known])
    batches = sorted([*made, *made_before], key=lambda batch: (goes_out(batch), batch.reference_id), reverse=True)
    complete = cursor is None and all_scheduled and len(batches) <= max_batches
    return batches[:max_batches], complete


def goes_out(batch: Batch) -> datetime:
    """When a batch goes out: its send time when scheduled, else when it was made."""
    return goes_out_at(created_at=batch.created_at, send_at=batch.send_at)


def _first_messages(store: MessageStore, batch: Batch, wanted: int) -> list[Message]:
    return _read_messages(store, batch, wanted)[0]


def _read_messages(store: MessageStore, batch: Batch, wanted: int) -> tuple[list[Message], str | None]:
    """Up to `wanted` of the batch's messages, and the cursor past them (None: the batch has no more). Pages are
    followed: DynamoDB cuts a page at 1 MB, before its limit when the messages carry long texts."""
    found: list[Message] = []
    cursor: str | None = None
    while len(found) < wanted:
        page, cursor = store.list_messages(
            batch.account_id, batch.reference_id, limit=min(COUNTED_MESSAGES, wanted - len(found)), cursor=cursor
        )
        found.extend(page)
        if cursor is None:
            break
    return found, cursor


def recent_window(
    history: BatchHistory, store: MessageStore, account_id: str, *, now: datetime, zone: tzinfo
) -> Window:
    """The window the portal's delivery figures and credit usage cover: today and the 6 days before it, whole days
    in the account's zone (7 days back to the hour would start with a part of an eighth day)."""
    first_day = now.astimezone(zone).date() - timedelta(days=WINDOW_DAYS - 1)
    return read_window(history, store, account_id, since=datetime.combine(first_day, time(), zone), until=now)


@dataclass(frozen=True)
class BatchRow:
    """A listed batch with its messages counted by status (from its first COUNTED_MESSAGES), and the credits that
    came back of its cost (refunded_credits, of those messages)."""

    view: BatchView
    counted_all: bool
    refunded: int = 0

    @property
    def batch(self) -> Batch:
        return self.view.batch


def batch_rows(store: MessageStore, batches: Sequence[Batch], *, known: Window | None = None) -> list[BatchRow]:
    """Each batch with its messages counted: from `known` when it read them all already, else read (side by side)."""

    def row(batch: Batch) -> BatchRow:
        if known is not None and batch.reference_id in known.whole:
            messages, counted_all = known.messages[batch.reference_id], True
        else:
            # Every page up to COUNTED_MESSAGES: one read stopped at 1 MB, 454 of a 1000-message batch of a long
            # Chinese text counted (until 2026-12-07), its status judged on them.
            messages, cursor = _read_messages(store, batch, COUNTED_MESSAGES)
            counted_all = cursor is None
        counts = Counter(str(message.status) for message in messages)
        view = BatchView(batch=batch, counts=dict(counts))
        return BatchRow(view=view, counted_all=counted_all, refunded=refunded_credits(batch, messages))

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return list(pool.map(row, batches))


def recent_batches(
    history: BatchHistory,
    store: MessageStore,
    account_id: str,
    *,
    limit: int,
    cursor: str | None,
    known: Window | None = None,
) -> tuple[list[BatchRow], str | None]:
    batches, next_cursor = history.list_batches(account_id, limit=limit, cursor=cursor)
    return batch_rows(store, batches, known=known), next_cursor


@dataclass(frozen=True)
class SearchQuery:
    number: str | None = None
    # A batch's reference_id, a message_id, or the client's own ref_id.
    reference: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.number or self.reference or self.since or self.until)


@dataclass(frozen=True)
class SearchResult:
    batches: list[Batch]
    # Only for a search by number: that number's messages in the batches found.
    messages: list[Message]
    # False when the search stopped at a bound (MAX_WINDOW_BATCHES batches, MAX_WINDOW_MESSAGES messages).
    complete: bool


def search(history: BatchHistory, store: MessageStore, account: Account, query: SearchQuery) -> SearchResult:
    """Batches (and, given a number, that number's messages) matching every criterion given. A reference that is
    a batch's reference_id or a message_id is looked up by key; anything else (a client ref_id, a number, dates)
    is matched in the recent window: MAX_WINDOW_BATCHES batches, the latest to go out first, made or going out
    within the dates if given."""
    msisdn = _search_number(query.number, account.default_country)
    if query.since and query.until and query.since > query.until:
        raise InvalidRequest("the 'from' date is after the 'to' date")
    keyed = _by_key(store, account.account_id, query.reference)
    if keyed is not None:
        keyed = [batch for batch in keyed if _made_or_going_out_within(batch, query.since, query.until)]
        window = Window(since=None, until=None, batches=keyed, complete=True)
        if msisdn is not None:
            window = _with_messages(store, window)
    else:
        window = read_window(
            history, store, account.account_id, since=query.since, until=query.until, with_messages=msisdn is not None
        )
    batches = window.batches
    if query.reference and keyed is None:
        batches = [batch for batch in batches if batch.ref_id == query.reference.strip()]
    if msisdn is None:
        return SearchResult(batches=batches, messages=[], complete=window.complete)
    messages = [
        message
        for batch in batches
        for message in window.messages.get(batch.reference_id, ())
        if message.msisdn == msisdn
    ]
    found = {message.reference_id for message in messages}
    return SearchResult(
        batches=[batch for batch in batches if batch.reference_id in found], messages=messages, complete=window.complete
    )


def _within(moment: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or moment >= since) and (until is None or moment <= until)


def _made_or_going_out_within(batch: Batch, since: datetime | None, until: datetime | None) -> bool:
    """Whether search dates hold a batch: made within them, or going out within them (the batches table's "Sent")."""
    return _within(from_iso(batch.created_at), since, until) or _within(goes_out(batch), since, until)


def _search_number(raw: str | None, default_country: str) -> str | None:
    if not raw or not raw.strip():
        return None
    try:
        return parse_msisdn(raw.strip(), default_country).e164
    except InvalidMsisdn as error:
        raise InvalidRequest(f"the number to search for is not valid: {error.reason}") from error


def _by_key(store: MessageStore, account_id: str, reference: str | None) -> list[Batch] | None:
    """The batch a reference_id or message_id of the account names, by key; None when the reference is not an id,
    or is digits that name none of the account's batches or messages: then it is matched as a client ref_id in
    the window instead (a ref_id may be digits, a client's order number; another account's id or one that does not
    exist finds nothing there either, so the two read alike)."""
    raw = (reference or "").strip()
    if not ascii_digits(raw) or len(raw) > 19:
        return None
    batch = store.get_batch(account_id, int(raw))
    if batch is None:
        message = store.find_message(account_id, int(raw))
        batch = store.get_batch(account_id, message.reference_id) if message is not None else None
    return [batch] if batch is not None else None


def _with_messages(store: MessageStore, window: Window) -> Window:
    """The messages of batches found by key (one, in practice; a batch has at most 1000)."""
    messages = {batch.reference_id: _first_messages(store, batch, batch.recipients) for batch in window.batches}
    whole = frozenset(messages)
    return Window(since=None, until=None, batches=window.batches, messages=messages, whole=whole, complete=True)


@dataclass(frozen=True)
class DeliveryPoint:
    """Messages of one period or network, counted by status."""

    label: str
    counts: dict[str, int]

    @property
    def delivered(self) -> int:
        return self.counts.get(str(MessageStatus.DELIVERED), 0)

    @property
    def with_outcome(self) -> int:
        """Delivered plus failed, expired and rejected: the messages whose fate is known."""
        return sum(self.counts.get(str(status), 0) for status in FINAL_OUTCOMES)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float | None:
        """Delivered / (delivered + failed + expired + rejected); None before any outcome is known."""
        return self.delivered / self.with_outcome if self.with_outcome else None


def _local(stamp: str, zone: tzinfo) -> datetime:
    return from_iso(stamp).astimezone(zone)


def delivery_over_time(window: Window, zone: tzinfo, *, now: datetime, hourly: bool = False) -> list[DeliveryPoint]:
    """One point per day (or hour) of the window in the account's time zone, oldest first, empty periods too;
    messages count in the period they were sent: a scheduled one at its batch's send time, not when it was made (a
    campaign made on Friday for Monday morning was drawn on Friday until 2026-12-07, and in no hour of Monday's)."""
    counts: dict[datetime, Counter[str]] = defaultdict(Counter)
    for message in window.all_messages():
        sent = goes_out_at(created_at=message.created_at, send_at=message.send_at)
        counts[_period_start(sent, zone, hourly)][str(message.status)] += 1
    first = window.since or min(counts, default=now)
    label_format = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    return [
        DeliveryPoint(label=start.astimezone(zone).strftime(label_format), counts=dict(counts.get(start, {})))
        for start in _periods(
            _period_start(first, zone, hourly), _period_start(window.until or now, zone, hourly), zone, hourly
        )
    ]


def _period_start(moment: datetime, zone: tzinfo, hourly: bool) -> datetime:
    """The start of the period holding `moment`: a local date in `zone`, or a local hour kept in UTC. Two local
    times of one zone compare by wall clock (fold ignored), so the hour a clock change repeats would merge with its
    first pass, and a difference across a change would be off by the hour; UTC instants are neither."""
    local = moment.astimezone(zone)
    if hourly:
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return datetime.combine(local.date(), time(), zone)


def _periods(first: datetime, last: datetime, zone: tzinfo, hourly: bool) -> list[datetime]:
    if not hourly:
        days = (last.date() - first.date()).days
        return [datetime.combine(first.date() + timedelta(days=n), time(), zone) for n in range(days + 1)]
    # Stepped in UTC, so a daylight-saving change neither skips nor repeats an hour.
    hours = int((last - first) / timedelta(hours=1))
    return [first + timedelta(hours=n) for n in range(hours + 1)]


def delivery_by_network(window: Window) -> list[DeliveryPoint]:
    """One point per mobile network (slug, or "unknown"), the network with the most messages first: the messages
    that went out in the window."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for message in window.sent_messages():
        counts[message.telco or "unknown"][str(message.status)] += 1
    points = [DeliveryPoint(label=telco, counts=dict(by_status)) for telco, by_status in counts.items()]
    return sorted(points, key=lambda point: (-point.total, point.label))


@dataclass(frozen=True)
class UsageDay:
    day: date
    charged: int
    refunded: int

    @property
    def spent(self) -> int:
        return self.charged - self.refunded


def credit_usage(window: Window, zone: tzinfo) -> list[UsageDay]:
    """Credits per day of the window, newest first (days with no batch left out): charged is what the day's
    batches reserved when they were made, refunded what came back: the whole cost of a batch that failed, and for
    the others the prices of their messages that failed or were cancelled. A batch made before the window (a
    campaign sent in it) is not the window's: its credits were taken before. A batch whose messages the window's
    bound left unread (some or all) is left out, charged and refunded alike: what came back of it is not known,
    and the window is then not complete, so the page says the figures cover only part of the period."""
    charged: Counter[date] = Counter()
    refunded: Counter[date] = Counter()
    for batch in window.batches:
        if not _within(from_iso(batch.created_at), window.since, window.until):
            continue
        day = _local(batch.created_at, zone).date()
        # A failed batch's refund is its whole cost, known without its messages (refunded_credits).
        if batch.status == MessageStatus.FAILED or batch.reference_id in window.whole:
            charged[day] += batch.cost
            refunded[day] += refunded_credits(batch, window.messages.get(batch.reference_id, ()))
    return [UsageDay(day=day, charged=charged[day], refunded=refunded[day]) for day in sorted(charged, reverse=True)]


def refunded_credits(batch: Batch, messages: Iterable[Message]) -> int:
    """What came back of a batch's cost, given all its messages."""
    if batch.status == MessageStatus.FAILED:
        # Only an undone send fails its batch, and every undo gives the whole cost back (logic/send.py): in the
        # batch's own write (give_back, or withdraw of a scheduled one), after which the messages it had stored
        # are failed (not_queued) without a refund of their own, some or none of them; or message by message
        # when every one was stored and withdrawn. Its messages' prices would miss those never stored.
        return batch.cost
    # Not a cancelled batch's cost from its status alone: a cancel that died part-way leaves the batch cancelled and
    # some messages still scheduled and charged (logic/batches.finish_cancel).
    return sum(message_refund(message) for message in messages)


def message_refund(message: Message) -> int:
    """What came back of a message's price: all of it once it failed, expired, was rejected or cancelled."""
    return message.price if message.status in REFUNDED_MESSAGES else 0


class SendTimeBackfill(Record):
    """What backfill_send_times did (in a dry run: would do): the scheduled batches it gave an entry by send time,
    and those that had one (written by their send since session 36, or by an earlier run)."""

    added: int = 0
    already: int = 0
    dry_run: bool = False


def backfill_send_times(
    store: SendTimeEntries, *, account_id: str | None = None, dry_run: bool = False
) -> SendTimeBackfill:
    """Gives every scheduled batch made before session 36 its entry by send time (`GOES_OUT#`), which the window
    reads (_made_or_going_out): without it a campaign made before the week it goes out is in no week's figures and
    not found by the dates it went out. Each write is conditional on the entry's absence and a batch's send time never
    changes, so a run stopped anywhere, run again or beside another, writes each entry once. A dry run reads whether
    each has one instead (one read a batch), and writes nothing."""
    added = already = 0
    for batch, expires_at in store.scheduled_batches(account_id):
        if store.has_send_time_entry(batch) if dry_run else not store.add_send_time_entry(batch, expires_at):
            already += 1
        else:
            added += 1
    return SendTimeBackfill(added=added, already=already, dry_run=dry_run)

"""A send to numbers and group ids before it is accepted: its recipients resolved, and its dry run (parts,
encoding, cost, balance). Shared by the 9bits dialect and the portal's Compose page, so both quote alike."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from sms_gateway.domain.models import Account, Recipient
from sms_gateway.domain.msisdn import InvalidMsisdn, parse_msisdn
from sms_gateway.domain.pricing import PriceTable
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic import groups
from sms_gateway.logic.send import (
    Quote,
    Rejection,
    normalise_recipients,
    quote,
    refuse_opted_out,
    require_sender,
    require_valid,
)
from sms_gateway.ports import AccountStore, GroupStore, OptOutStore

MAX_RECIPIENTS = 1000
UNKNOWN_GROUP = "unknown group id"


def require_at_most_a_thousand(count: int, counted: str) -> None:
    """`counted` says what `count` counted, for the message (e.g. "2000 numbers and group ids were given")."""
    if count > MAX_RECIPIENTS:
        raise InvalidRequest(f"at most {MAX_RECIPIENTS} recipients per request: {counted}")


@dataclass(frozen=True)
class Resolved:
    """A send's `to` as recipients (groups expanded, numbers parsed, each number once), and what was not."""

    recipients: list[Recipient]
    # Numbers that are not valid, each with its reason.
    rejected: list[Rejection]
    unknown_groups: list[str]


def resolve_recipients(store: GroupStore, account: Account, to: Sequence[str], *, strict: bool) -> Resolved:
    """Strict (a send): an unknown group or an invalid number refuses the whole request before anything is
    priced. Otherwise (a dry run) they are returned for the caller to list.

    More than 1000 entries (numbers and group ids, as given, repeats included) are refused before anything is read:
    expanding reads each distinct group id, so this bounds the reads of every caller (the 9bits request model
    counts its `to` alike; the portal's pasted numbers and CSV come here unbounded)."""
    require_at_most_a_thousand(len(to), f"{len(to)} numbers and group ids were given")
    expansion = groups.expand(store, account.account_id, to, most=MAX_RECIPIENTS)
    if strict:
        groups.require_known_groups(expansion)
    # Members are distinct numbers already: a group too big for one send is refused before any number is parsed
    # (and expand read no group past the cap: the count is then of the groups read, a floor).
    counted = f"{'at least ' if expansion.stopped else ''}{expansion.group_members}"
    require_at_most_a_thousand(expansion.group_members, f"'to' its groups alone have {counted} members")
    recipients, rejected = normalise_recipients(expansion.numbers, account.default_country)
    if strict:
        require_valid(rejected)
        if not recipients:
            # Only groups with no members: a send needs one recipient (it was a 500, and held its Idempotency-Key).
            raise InvalidRequest("'to' names no recipient: its groups have no members")
    require_at_most_a_thousand(len(recipients), f"'to' with its groups expanded names {len(recipients)}")
    return Resolved(recipients=recipients, rejected=rejected, unknown_groups=expansion.unknown_groups)


def recipients_still_named(store: GroupStore, account: Account, to: Sequence[str]) -> list[Recipient]:
    """A send's `to` as far as it resolves now, refusing nothing: for the answer of a send that stands under a key,
    whose retry was refused (a group deleted since names nobody; invalid numbers are left out; no group is read past
    MAX_RECIPIENTS members)."""
    expansion = groups.expand(store, account.account_id, to, most=MAX_RECIPIENTS)
    return normalise_recipients(expansion.numbers, account.default_country)[0]


@dataclass(frozen=True)
class DryRun:
    """What a send would do, with nothing stored, charged or queued."""

    priced: Quote
    # The recipients that would be sent to (opted-out numbers left out, as a send leaves them out).
    recipients: list[Recipient]
    # Unknown group ids and invalid numbers: any of these refuses the send.
    invalid: list[Rejection]
    # Numbers that opted out of the sender: a send leaves only them out.
    opted_out: list[Rejection]
    balance: int

    @property
    def sufficient(self) -> bool:
        return self.priced.cost <= self.balance

    @property
    def would_be_accepted(self) -> bool:
        return self.sufficient and not self.invalid and bool(self.recipients)


def dry_run(
    account: Account,
    sender: str,
    text: str,
    to: Sequence[str],
    *,
    groups_store: GroupStore,
    accounts: AccountStore,
    opt_outs: OptOutStore | None,
    prices: PriceTable,
    route_tier: str,
) -> DryRun:
    require_sender(account, sender)
    resolved = resolve_recipients(groups_store, account, to, strict=False)
    recipients, opted_out = refuse_opted_out(account, sender, resolved.recipients, opt_outs)
    priced = quote(account, text, recipients, route_tier, prices)
    invalid = [Rejection(raw=group_id, reason=UNKNOWN_GROUP) for group_id in resolved.unknown_groups]
    return DryRun(
        priced=priced,
        recipients=recipients,
        invalid=invalid + resolved.rejected,
        opted_out=opted_out,
        # Read consistently: a quote asked right after a send (or a top-up) weighs the balance it left.
        balance=accounts.balance(account.account_id),
    )


# What a header cell of a recipients CSV may say; any other first row is read as data.
NUMBER_HEADERS = frozenset({"number", "numbers", "phone", "phone number", "phone_number", "msisdn", "mobile", "to"})
# Sent inside a URL-encoded form (the file is read by the page), which must stay under the 256 KB body limit.
MAX_CSV_BYTES = 64 * 1024


@dataclass(frozen=True)
class RowProblem:
    """A row of an uploaded recipients file that cannot be sent to, and why (rows count from 1, as a
    spreadsheet shows them)."""

    row: int
    value: str
    reason: str

    def __str__(self) -> str:
        shown = f" {self.value!r}" if self.value else ""
        return f"row {self.row}{shown}: {self.reason}"


def pasted_numbers(text: str) -> list[str]:
    """Numbers typed or pasted into a box: one per line, or separated by commas or semicolons. Spaces inside
    a number ("0803 000 0000") are kept for the number parser, which reads them as separators."""
    lines = [line.strip() for line in text.replace(";", ",").splitlines()]
    pieces = [piece.strip() for line in lines for piece in line.split(",")]
    return [piece for piece in pieces if piece]


def csv_numbers(content: bytes, default_country: str) -> tuple[list[str], list[RowProblem]]:
    """The numbers of an uploaded CSV: one column of numbers, or the column headed number/phone/msisdn/mobile/to
    (else the first). Each bad row is reported with its row number and reason; blank rows are skipped."""
    if len(content) > MAX_CSV_BYTES:
        raise InvalidRequest(f"the file is {len(content)} bytes, over the {MAX_CSV_BYTES // 1024} KB limit")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidRequest("the file is not UTF-8 text: save it as CSV (UTF-8)") from error
    rows = list(csv.reader(io.StringIO(text)))
    column = 0
    first_data_row = 0
    if rows:
        header = [cell.strip().lower() for cell in rows[0]]
        named = [index for index, cell in enumerate(header) if cell in NUMBER_HEADERS]
        if named:
            column, first_data_row = named[0], 1
    numbers: list[str] = []
    problems: list[RowProblem] = []
    for index, row in enumerate(rows[first_data_row:], start=first_data_row + 1):
        if not any(cell.strip() for cell in row):
            continue
        value = row[column].strip() if column < len(row) else ""
        if not value:
            problems.append(RowProblem(row=index, value="", reason="no number in this row"))
            continue
        try:
            parse_msisdn(value, default_country)
        except InvalidMsisdn as error:
            problems.append(RowProblem(row=index, value=value, reason=error.reason))
            continue
        numbers.append(value)
    if len(numbers) > MAX_RECIPIENTS:
        raise InvalidRequest(f"the file has {len(numbers)} numbers; at most {MAX_RECIPIENTS} per send")
    return numbers, problems

"""Bulk sends from a CSV file: per-row text from a template, per-row idempotency keys, and a progress file."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, fields
from itertools import chain, islice
from pathlib import Path
from string import Formatter
from typing import Any

from sms_gateway.domain.msisdn import InvalidMsisdn, international_digits, parse_msisdn
from sms_gateway_tools.scratch import Scratch, ScratchFailed

# Header names (any case) taken for the recipient's number, first found wins.
NUMBER_COLUMNS = ("to", "msisdn", "phone", "mobile")
PROGRESS_SUFFIX = ".sent.jsonl"
# The cell separators a CSV may use, the default first (`separator`).
SEPARATORS = (",", ";", "\t")
# What Python's "surrogateescape" makes of a byte that is not UTF-8 (`_utf8_lines`).
_UNDECODED = re.compile("[\udc80-\udcff]")
# Rows read from the file and waiting for a sender, per concurrent sender (`send_rows`).
ROWS_AHEAD_PER_WORKER = 2


class BulkSendError(Exception):
    """The whole file cannot be sent (no number column, a broken template): nothing is sent."""


class RowRejected(Exception):
    """One row cannot be sent; the reason goes into the summary and the other rows carry on."""


class KeyUsed(RowRejected):
    """The gateway holds the row's key for another request (409 "used for a different request"): the same message
    sent within its 24 hours with the number written another way, or with delivery reports set otherwise. Nothing
    was sent; most likely the row was sent then, so the row is told apart from the rows the gateway refused."""


KEY_USED_REASON = (
    "not sent again: the gateway has this row's key from a send within the last 24 hours with the number written "
    "another way ('+234...' or '00234...' against bare '234...') or --dlr set otherwise; most likely it was sent "
    "then: check with `sms-gateway status` (the reference id is in the progress file of the run that sent it)"
)


@dataclass(frozen=True)
class Row:
    line: int  # the CSV line the row ends on, as an editor shows it (the header is line 1)
    to: str
    fields: dict[str, str]


@dataclass(frozen=True)
class RowResult:
    line: int
    to: str
    outcome: str  # "accepted", "already_accepted", "duplicate", "rejected" or "key_used" (KeyUsed)
    key: str
    reference_id: str | None = None
    cost: int | None = None
    reason: str | None = None


def template_fields(template: str) -> list[str]:
    """The column names a template uses, each once (`Hi {name}` -> ["name"]); a malformed template, or a placeholder
    that is more than a name (`placeholders`), is refused up front."""
    names: list[str] = []
    for _, name in placeholders(template):
        if name is not None and name not in names:
            names.append(name)
    return names


def placeholders(template: str, columns: Sequence[str] | None = None) -> list[tuple[str, str | None]]:
    """The template as (literal text, column name or None) pieces, `{{` and `}}` read as literal braces.

    A placeholder is a column's name alone: one with a conversion or a format (`{name!r}`, `{name:>10}`) is refused
    (BulkSendError), as is one naming none of `columns` when they are given (`{name.upper}`, `{name[0]}`, a typo).
    Until session 36 the text was filled by Python's str.format, which read `{name.upper}` as the value's attribute:
    every row was sent, and charged, "Hi <built-in method upper of str object at 0x...>"."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as error:
        raise BulkSendError(
            f"the message template is malformed: {error} (write a literal brace as {{{{ or }}}})"
        ) from error
    pieces: list[tuple[str, str | None]] = []
    for literal, name, format_spec, conversion in parsed:
        if name is not None:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{format_spec}" if format_spec else "")
            if (
                name == ""
                or name.isdigit()
                or conversion
                or format_spec
                or (columns is not None and name not in columns)
            ):
                raise BulkSendError(_not_a_column(written + "}", columns))
        pieces.append((literal, name))
    return pieces


def _not_a_column(placeholder: str, columns: Sequence[str] | None) -> str:
    among = f" (the CSV's columns: {', '.join(columns)})" if columns is not None else ""
    return (
        f"the message template's placeholder {placeholder} is not a column's name{among}: a placeholder is a column's "
        "name alone, as in {name}, with no attribute, index, conversion or format; write a literal brace as {{ or }}"
    )


def render(template: str, fields: dict[str, str]) -> str:
    """The row's text; a column the row has no value for (absent or empty) rejects the row, not the file."""
    missing = [name for name in template_fields(template) if not (fields.get(name) or "").strip()]
    if missing:
        raise RowRejected(f"no value for {', '.join(missing)} (used by the message template)")
    return "".join(literal + (fields[name] if name is not None else "") for literal, name in placeholders(template))


def row_key(sender: str, template: str, to: str, fields: dict[str, str]) -> str:
    """The row's Idempotency-Key, from what the row sends: the sender, the number, the template and the values of
    the columns the template uses. Not from where the row sits in the file, nor from the columns it does not use,
    nor from how the number is written: `+234 802-000 0011`, `002348020000011` and `2348020000011` are one number
    (`number_key`).

    A rerun of the same file (also after rows were fixed, added, removed or reordered, a column was added or
    changed that the message does not use, or the numbers were written another way) sends an accepted row under
    the same key, so the gateway answers its first answer instead of sending it again; two rows that would send
    the same message have the same key.
    """
    return written_number_key(sender, template, number_key(to), fields)


def number_key(to: str) -> str:
    """The number as the key takes it: written in international form, the digits the gateway reads it as
    (`read_international`: a trunk '0' after the country code dropped); else its international digits
    (`international_digits`), or the text as written when it cannot be a number (the gateway refuses the row). A
    national form (`08020000011`) stays its own: only the account's country, which the client API does not tell, makes
    it `2348020000011`."""
    return read_international(to) or previous_number_key(to)


def previous_number_key(to: str) -> str:
    """`number_key` until 2026-12-06, which kept a trunk '0' written after the country code ('+234 (0)802 ...' was
    '23408...', another key than '+234802...'): progress files record rows under the keys it made, so they are looked
    up too."""
    return international_digits(to) or to


def read_international(to: str) -> str | None:
    """The E.164 digits of a number written in international form ('+' or '00' in front) as the gateway reads it:
    '+234 (0)802 000 0011' and '+44 (0)7911 123456' drop the trunk '0' there, as '+2348020000011' and
    '+447911123456'. The country is in the number, so nothing of the account is needed. None for any other form,
    or for a number the gateway refuses."""
    digits = international_digits(to)
    if digits is None or not _written_international(to, digits):
        return None
    try:
        return parse_msisdn(to).digits
    except InvalidMsisdn:
        return None


def _written_international(to: str, digits: str) -> bool:
    """Whether `to`, whose international digits are `digits`, is written with '+' or '00' in front."""
    return "+" in to or "".join(character for character in to if character in "0123456789") != digits


def sent_number(to: str) -> str:
    """The number as a row's request carries it: one text for the ways of writing it that the gateway reads as the
    same number, so a row sent again under its key (which `number_key` makes) is the same request, which the gateway
    answers its first answer, not a "key used for a different request".

    Written in international form ('+' or '00' in front, separators or not): '+' and the digits the gateway reads
    (`read_international`: '+234 (0)802 000 0011' goes as '+2348020000011'). Otherwise its digits without
    separators: never given a '+', since the gateway reads bare digits as international only when they start with the
    account's calling code (else as a national number), and the client API does not tell that country. So '+234...'
    and bare '234...' stay two requests under one key. Text that cannot be a number goes as written (the gateway
    refuses it).
    """
    digits = international_digits(to)
    if digits is None:
        return to
    if _written_international(to, digits):
        return "+" + (read_international(to) or digits)
    return digits


def written_number_key(sender: str, template: str, to: str, fields: dict[str, str]) -> str:
    """`row_key` with the number exactly as written: the key versions until 2026-12-06 gave a row (the same as
    `row_key` for a number written in bare digits). Progress files they wrote record rows under it, so it is looked
    up too, with every way the file wrote the row's number: what they recorded as accepted is not sent again."""
    used = [[name, fields.get(name, "")] for name in sorted(template_fields(template))]
    return _hashed_key([sender, to, template, used])


def all_columns_key(sender: str, template: str, fields: dict[str, str]) -> str:
    """The key earlier versions gave a row: a hash of every column, used or not. The progress files they wrote
    record rows under it, so it is looked up too: what they recorded as accepted is not sent again."""
    return _hashed_key([sender, template, sorted(fields.items())])


def _hashed_key(parts: list[Any]) -> str:
    canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return "csv-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def number_column(header: Iterable[str]) -> str:
    by_lower = {name.strip().lower(): name for name in header}
    for wanted in NUMBER_COLUMNS:
        if wanted in by_lower:
            return by_lower[wanted]
    raise BulkSendError(f"the CSV needs a column with the recipient's number: one of {', '.join(NUMBER_COLUMNS)}")


def refuse_repeated_columns(header: Sequence[str]) -> None:
    """BulkSendError naming the first column the header has twice (spaces around a name do not count; a number
    column's name in any case, as `number_column` reads it): a row has one cell a column, and which one to send is
    not guessed (until session 37 the last one's cells were sent, to the second list's numbers or with its names)."""
    seen: dict[str, int] = {}
    for position, written in enumerate(header, start=1):
        name = str(written).strip()
        same = name.lower() if name.lower() in NUMBER_COLUMNS else name
        if not name:
            continue  # the unnamed cells an export leaves after the last column: no template can name them
        if same in seen:
            raise BulkSendError(
                f"the column {name!r} is in the header twice (columns {seen[same]} and {position}): which one's cells "
                "to send is not guessed: remove or rename one"
            )
        seen[same] = position


def read_rows(lines: Iterable[str], template: str | None = None) -> Iterator[Row]:
    """The file's rows, its cells separated as its header line's are (`separator`); a file that is not valid CSV is
    refused (BulkSendError naming the line its bad row starts on), never guessed at: a quote opened and never closed
    would make the rest of the file one cell of one row. So is a `template` with a placeholder that names none of
    its columns (`placeholders`), and a header with a column twice (`refuse_repeated_columns`)."""
    rest = _utf8_lines(lines)
    first = list(islice(rest, 1))
    # strict: a quote never closed, or text after a closing quote, is an error instead of a cell taken as it falls.
    reader = csv.DictReader(chain(first, rest), delimiter=separator("".join(first)), strict=True)
    starts_on = 1
    try:
        header = reader.fieldnames
        if header is None:
            raise BulkSendError("the CSV is empty: it needs a header line (to,name,...) and rows")
        refuse_repeated_columns(header)
        to_column = number_column(header)
        if template is not None:
            placeholders(template, [str(name).strip() for name in header])
        while True:
            starts_on = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return
            # A short row has None for its missing cells; a long one keeps its extra cells under the key None.
            fields = {str(name).strip(): (value or "").strip() for name, value in record.items() if name is not None}
            if not any(fields.values()) and not any(cell.strip() for cell in record.get(None) or []):
                continue  # an empty row of the sheet, saved as separators only (',,'): no row, as a blank line
            yield Row(line=reader.line_num, to=fields.get(to_column.strip(), ""), fields=fields)
    except csv.Error as error:
        raise BulkSendError(_malformed(starts_on, str(error))) from error


def _utf8_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines, refusing (BulkSendError naming it) the first that holds bytes UTF-8 could not decode, which a file
    opened with errors="surrogateescape" keeps as U+DC80..U+DCFF: the file is not UTF-8 (Excel's "CSV (Comma
    delimited)" is the Windows code page), and its encoding is never guessed at."""
    for number, line in enumerate(lines, start=1):
        undecoded = _UNDECODED.search(line)
        if undecoded:
            byte = ord(undecoded.group()) - 0xDC00
            raise BulkSendError(
                f'line {number} is not UTF-8 (byte 0x{byte:02X}): save the file as "CSV UTF-8" (Excel: File > Save '
                "As > CSV UTF-8 (Comma delimited)) and run the command again"
            )
        yield line


def separator(header_line: str) -> str:
    """The separator the header line uses most outside quotes: ',' (the default, and on a tie), ';' (Excel's where ','
    is the decimal comma: most of Europe, Latin America) or a tab (a tab-separated export)."""
    unquoted = re.sub(r'"[^"]*"', "", header_line)
    return max(SEPARATORS, key=unquoted.count)


def _malformed(line: int, reason: str) -> str:
    """What is wrong with the row starting on `line`, in the words of someone fixing the file in an editor."""
    if "unexpected end of data" in reason:
        return (
            f'line {line}: a quote (") opened there is never closed, so the rest of the file would be one cell: '
            'close it, or remove it (a quote inside a quoted cell is written "")'
        )
    if "field larger than field limit" in reason:
        return (
            f'line {line}: a cell longer than {csv.field_size_limit()} characters: most likely a quote (") opened '
            "there is never closed, so the rest of the file would be one cell"
        )
    return f'line {line} is not valid CSV: {reason} (a quote inside a quoted cell is written "")'


def progress_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + PROGRESS_SUFFIX)


def progress_target(api_url: str, token: str) -> str:
    """Which gateway and account a progress entry was accepted by: the API URL and a short hash of the token.

    Never the token itself (the progress file is a plain file next to the CSV). Another token, even of the
    same account, is another target: its rows are sent under their keys and the gateway answers what it knows.
    """
    token_hash = hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"{api_url.strip().rstrip('/')} token-sha256:{token_hash}"


# The progress file's entries as a run looks them up: on disk (`Scratch`), as a campaign's file has a line a row.
PROGRESS_SCHEMA = """
CREATE TABLE entries (scope INTEGER NOT NULL, key TEXT NOT NULL, entry TEXT NOT NULL, UNIQUE (key, scope));
CREATE TABLE written (number TEXT NOT NULL, way TEXT NOT NULL, PRIMARY KEY (number, way)) WITHOUT ROWID;
"""
ACCEPTED_HERE, UNTARGETED = 1, 0


class RecordedEntries(Mapping[str, dict[str, Any]]):
    """The progress file's entries of one scope (`ACCEPTED_HERE` or `UNTARGETED`) by key, in the file's order."""

    def __init__(self, scratch: Scratch, scope: int) -> None:
        self._scratch = scratch
        self._scope = scope

    def __getitem__(self, key: str) -> dict[str, Any]:
        found = self._scratch.rows("SELECT entry FROM entries WHERE scope = ? AND key = ?", (self._scope, key))
        if not found:
            raise KeyError(key)
        entry: dict[str, Any] = json.loads(found[0][0])
        return entry

    def __contains__(self, key: object) -> bool:
        query = "SELECT 1 FROM entries WHERE scope = ? AND key = ?"
        return isinstance(key, str) and bool(self._scratch.rows(query, (self._scope, key)))

    def __len__(self) -> int:
        [(count,)] = self._scratch.rows("SELECT COUNT(*) FROM entries WHERE scope = ?", (self._scope,))
        return int(count)

    def __iter__(self) -> Iterator[str]:
        query = "SELECT rowid, key FROM entries WHERE scope = ? AND rowid > ? ORDER BY rowid LIMIT ?"
        for _, key in self._scratch.paged(query, (self._scope,), start=(0,), after=lambda row: (row[0],)):
            yield key

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """The entry of `key`, in the place of an earlier one (as a dict's item)."""
        self._scratch.write(
            "INSERT INTO entries VALUES (?, ?, ?) ON CONFLICT (key, scope) DO UPDATE SET entry = excluded.entry",
            (self._scope, key, json.dumps(entry)),
        )


class ProgressFile:
    """Rows the gateway accepted, one JSON line each, appended as they are accepted (a crash loses none).

    Each entry names the target (gateway and account, `progress_target`) that accepted it; only the entries of
    `target` count as accepted, so the same CSV sent to another gateway or account is sent there in full.
    Entries without a target (written before targets were recorded) count for no target: their rows are sent
    again under their keys, which the gateway that accepted them answers with its first answer for 24 hours.

    The file is read a line at a time and its entries looked up on disk (`Scratch`): a campaign of millions of rows
    has a line each, which held in memory took over a kilobyte a row (until 2026-12-07).
    """

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self._lock = threading.Lock()
        # Also each number's `number_key` -> the ways the file's lines wrote it (`to`), for the keys earlier versions
        # made from the number as written (read once: the lines this version records are under `row_key`).
        self._scratch = Scratch(PROGRESS_SCHEMA)
        self.accepted = RecordedEntries(self._scratch, ACCEPTED_HERE)
        self.untargeted = RecordedEntries(self._scratch, UNTARGETED)
        self._read_any = False
        try:
            if path.exists():
                # A byte order mark in front (a Windows tool saved the file) is not part of its first line.
                with path.open(encoding="utf-8-sig") as lines:
                    for line in lines:
                        self._take(line)
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not a progress file (not UTF-8 text)"
            raise BulkSendError(f"cannot read the progress file {path}: {reason}") from error

    def _take(self, line: str) -> None:
        if not line.strip():
            return
        try:
            entry = json.loads(line)
            key = str(entry["key"])
            recorded_for = entry.get("target")
        except (ValueError, KeyError, TypeError, AttributeError):
            # A line cut short by a crash: the row's key still protects it at the gateway for 24 h.
            return
        if recorded_for == self.target:
            self.accepted.put(key, entry)
        elif recorded_for is None:
            self.untargeted.put(key, entry)
        else:
            return
        self._read_any = True
        to = entry.get("to")
        if isinstance(to, str) and to:
            self._scratch.write("INSERT OR IGNORE INTO written VALUES (?, ?)", (number_key(to), to))

    def ways_written(self, to: str) -> list[str]:
        """`to` and every other way the entries wrote the same number, `to` first."""
        if not self._read_any:
            return [to]
        written = self._scratch.rows("SELECT way FROM written WHERE number = ? ORDER BY way", (number_key(to),))
        return [to, *(way for (way,) in written if way != to)]

    def first_recorded(self, keys: Callable[[], list[str]]) -> tuple[str, dict[str, Any], bool] | None:
        """The first of `keys()` the file recorded when read, an entry accepted by this target before any without a
        target, then in the keys' order: (its key, its entry, whether this target accepted it). None at once (no key
        made) when the file recorded none. Not the entries this run records: a row of this run's is a duplicate of its
        first, which is told apart before (`FirstLines`)."""
        if not self._read_any:
            return None
        wanted = keys()
        marks = ", ".join("?" * len(wanted))
        query = f"SELECT scope, key, entry FROM entries WHERE key IN ({marks})"  # noqa: S608 - only its ? are made
        found = {(scope, key): entry for scope, key, entry in self._scratch.rows(query, wanted)}
        for scope in (ACCEPTED_HERE, UNTARGETED):
            for key in wanted:
                if (scope, key) in found:
                    return key, json.loads(found[scope, key]), scope == ACCEPTED_HERE
        return None

    def record(self, result: RowResult) -> None:
        entry = {"key": result.key, "line": result.line, "to": result.to, "reference_id": result.reference_id}
        entry["cost"] = result.cost
        entry["target"] = self.target
        line = (json.dumps(entry) + "\n").encode()
        with self._lock, self.path.open("ab+") as out:
            # A line cut short (a crash, a full disk) ends the file without its newline: this one starts on
            # a line of its own, not glued to the cut one (and lost with it when the file is read).
            if out.seek(0, os.SEEK_END) > 0:
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":
                    line = b"\n" + line
            out.write(line)


# Sends one row: (to, text, key) -> (reference_id, cost); raises RowRejected with the gateway's reason.
# A dry run's sender answers no reference id, and its "accepted" rows are rows that would be accepted.
SendOne = Callable[[str, str, str], tuple[str | None, int | None]]


# A run's row results, on disk (`Scratch`) until the summary is printed: a campaign may have millions of rows.
RESULTS_SCHEMA = """
CREATE TABLE results (
    line INTEGER NOT NULL, "to" TEXT NOT NULL, outcome TEXT NOT NULL, key TEXT NOT NULL,
    reference_id TEXT, cost INTEGER, reason TEXT
);
CREATE INDEX results_by_line ON results (line);
CREATE INDEX results_by_outcome ON results (outcome, line);
"""
# The columns a result is written to and read back from, RowResult's fields in its order: a field added to RowResult
# without its column in RESULTS_SCHEMA is an error, not a result read back into the wrong fields.
_RESULT_COLUMNS = ", ".join(f'"{field.name}"' for field in fields(RowResult))
_RESULT_MARKS = ", ".join("?" * len(fields(RowResult)))
_INSERT_RESULT = f"INSERT INTO results ({_RESULT_COLUMNS}) VALUES ({_RESULT_MARKS})"  # noqa: S608 - names of ours


def _results_after(condition: str = "") -> str:
    """Each result with its rowid (first), in line order, a page after a (line, rowid): all of them, or those
    meeting `condition`."""
    meeting = f"{condition} AND " if condition else ""
    return (
        f"SELECT rowid, {_RESULT_COLUMNS} FROM results "  # noqa: S608 - only names of ours, values are ?
        f"WHERE {meeting}(line, rowid) > (?, ?) ORDER BY line, rowid LIMIT ?"
    )


_RESULTS_AFTER = _results_after()
_OUTCOME_AFTER = _results_after("outcome = ?")
# The outcomes whose rows the gateway accepted, now or in an earlier run: the run's cost.
ACCEPTED_OUTCOMES = ("accepted", "already_accepted")


class Summary:
    """A run's outcome: counts and costs kept as the rows come, and each row's result kept on disk, read back in
    line order (`results`, `of`), so that a run's memory does not grow with its rows (until 2026-12-07 every
    result was held, about 360 MB for a million rows)."""

    def __init__(self, *, dry_run: bool = False) -> None:
        self.fatal: str | None = None
        self.dry_run = dry_run
        self.interrupted = False
        self.unrecorded: list[int] = []  # lines accepted that the progress file could not take
        # Whether the rows' results could not all be kept (`add`): then none are read back, only the counts.
        self.results_lost = False
        self._counts: Counter[str] = Counter()
        self._costs: Counter[str] = Counter()
        self._costs_unknown = 0
        self._lock = threading.Lock()
        self._results = Scratch(RESULTS_SCHEMA)

    def add(self, result: RowResult) -> None:
        """Counts the row's result and keeps it; ScratchFailed when it cannot be kept (it is counted all the same),
        and from then on results are only counted."""
        with self._lock:
            self._counts[result.outcome] += 1
            if result.outcome in ACCEPTED_OUTCOMES:
                self._costs[result.outcome] += result.cost or 0
                self._costs_unknown += result.cost is None
            if self.results_lost:
                return
            try:
                self._results.write(_INSERT_RESULT, astuple(result))
            except ScratchFailed:
                self.results_lost = True
                raise

    @property
    def rows(self) -> int:
        return sum(self._counts.values())

    def count(self, outcome: str) -> int:
        return self._counts[outcome]

    @property
    def results(self) -> Iterator[RowResult]:
        """Every row's result, in line order, read from disk as it goes."""
        return self._read(_RESULTS_AFTER, ())

    def of(self, outcome: str) -> Iterator[RowResult]:
        """The results of one outcome, in line order, read from disk as it goes."""
        return self._read(_OUTCOME_AFTER, (outcome,))

    def _read(self, query: str, parameters: tuple[str, ...]) -> Iterator[RowResult]:
        if self.results_lost:
            return
        for row in self._results.paged(query, parameters, start=(-1, 0), after=lambda row: (row[1], row[0])):
            yield RowResult(*row[1:])

    @property
    def cost(self) -> int:
        return sum(self._costs.values())

    @property
    def new_cost(self) -> int:
        """What the rows accepted in this run cost (in a dry run: would cost)."""
        return self._costs["accepted"]

    @property
    def cost_known(self) -> bool:
        return self._costs_unknown == 0

    def to_dict(self, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The summary as `--json` prints it, with the `run`'s own keys (`not_sent`, ...) after the counts; its
        "results" last (a reader of a million rows' has every other key first: until 2026-12-07 `not_sent` and
        `progress_file` came after them), an iterator of each row's, read from disk as it goes (`print_json`)."""
        return {
            "rows": self.rows,
            "accepted": self.count("accepted"),
            "already_accepted": self.count("already_accepted"),
            "duplicates": self.count("duplicate"),
            "rejected": self.count("rejected"),
            "key_used": self.count("key_used"),
            "cost": self.cost if self.cost_known else None,
            "new_cost": self.new_cost,
            "dry_run": self.dry_run,
            "error": self.fatal,
            "interrupted": self.interrupted,
            "unrecorded": sorted(self.unrecorded),
            **(run or {}),
            "results": (result.__dict__ for result in self.results),
        }


class FirstLines:
    """The line each message (`row_key`) of a run was first on, kept on disk: a repeat is told apart however many
    rows lie between."""

    def __init__(self) -> None:
        self._seen = Scratch("CREATE TABLE seen (message TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;")

    def first(self, message: str, line: int) -> int | None:
        """The line `message` was first on, or None when this is its first (`line` is then noted for it)."""
        if self._seen.write("INSERT OR IGNORE INTO seen VALUES (?, ?)", (message, line)):
            return None
        [(first,)] = self._seen.rows("SELECT line FROM seen WHERE message = ?", (message,))
        return int(first)


def print_json(fields: Mapping[str, Any], stream: Any) -> None:
    """`print(json.dumps(fields))`, a value that is an iterator written as a list an item at a time: the summary's
    results, which may be millions."""
    stream.write("{")
    for number, (name, value) in enumerate(fields.items()):
        stream.write(f"{', ' if number else ''}{json.dumps(name)}: ")
        if isinstance(value, Iterator):
            stream.write("[")
            for position, item in enumerate(value):
                stream.write(f"{', ' if position else ''}{json.dumps(item)}")
            stream.write("]")
        else:
            stream.write(json.dumps(value))
    stream.write("}\n")


@dataclass(frozen=True)
class _Keyed:
    message: str  # the row's `row_key`, which tells repeats apart
    key: str  # the key to send or look the row up under
    to: str  # the number as the request carries it
    accepted: dict[str, Any] | None = None  # the progress file's entry of `key` accepted by this target, if any


def _keyed(row: Row, sender: str, template: str, progress: ProgressFile) -> _Keyed:
    """The row's message, the key to send or look it up under, and the number as its request carries it.

    That is the message's key, unless the progress file records the row under the key of an earlier version (the
    number with a trunk '0' after its country code kept, `previous_number_key`; the number as written,
    `written_number_key`; or every column, `all_columns_key`; either with the number in any way
    the file wrote it): then that one, so a row it accepted counts as accepted, and a row it recorded without a
    target goes again under the key the gateway knows it by, with the number as that line wrote it (so as the
    request the gateway keeps under the key wrote it) when the gateway reads that the same way (`sent_number`).
    """
    message = row_key(sender, template, row.to, row.fields)

    def keys() -> list[str]:
        ways = progress.ways_written(row.to)
        return [
            message,
            *(written_number_key(sender, template, previous_number_key(to), row.fields) for to in ways),
            *(written_number_key(sender, template, to, row.fields) for to in ways),
            *(all_columns_key(sender, template, fields) for fields in _written_other_ways(row, ways)),
        ]

    to = sent_number(row.to)
    recorded = progress.first_recorded(keys)
    if recorded is None:
        return _Keyed(message, message, to)
    key, entry, accepted = recorded
    written = entry.get("to")
    if isinstance(written, str) and sent_number(written) == to:
        to = written
    return _Keyed(message, key, to, entry if accepted else None)


def _written_other_ways(row: Row, ways: list[str]) -> Iterator[dict[str, str]]:
    """The row's columns, then with its number column as each other way in `ways` (the all-columns key hashed the
    number as written)."""
    yield row.fields
    try:
        column = number_column(row.fields)
    except BulkSendError:
        return
    for to in ways[1:]:
        yield {**row.fields, column: to}


def _settled_without_sending(row: Row, keyed: _Keyed, *, template: str, first_lines: FirstLines) -> RowResult | str:
    """The row's result when no call is needed (a repeat, accepted earlier, or unsendable), else its text."""
    key = keyed.key
    first = first_lines.first(keyed.message, row.line)
    if first is not None:
        # Not "sent once": the repeat is settled before its first row is answered, which may refuse it or never be
        # sent (Ctrl-C); the message goes with that row, or not at all (until session 36 it said "sent once").
        reason = f"same number and values as line {first}: one message with it, not sent on its own"
        return RowResult(row.line, row.to, "duplicate", key, reason=reason)
    earlier = keyed.accepted
    if earlier is not None:
        reference_id, cost = earlier.get("reference_id"), earlier.get("cost")
        return RowResult(row.line, row.to, "already_accepted", key, reference_id=reference_id, cost=cost)
    if not row.to:
        return RowResult(row.line, row.to, "rejected", key, reason="no number in the row")
    try:
        return render(template, row.fields)
    except RowRejected as error:
        return RowResult(row.line, row.to, "rejected", key, reason=str(error))


class _FewAheadPool:
    """`workers` threads whose `submit` waits while `workers * ROWS_AHEAD_PER_WORKER` rows are already queued or
    in flight: rows are read from the file only a few ahead of the sends, so a big file is never held whole (each
    row with its queued send)."""

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers)
        self._places = threading.BoundedSemaphore(workers * ROWS_AHEAD_PER_WORKER)

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        self._places.acquire()
        self._executor.submit(self._run, work, *args)

    def _run(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        finally:
            self._places.release()

    def shutdown(self, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel_futures)


class _Run:
    """One `send_rows` run's rows as they settle: each result recorded (the progress file first) and counted, and
    the reason the run stopped."""

    def __init__(self, summary: Summary, progress: ProgressFile, on_result: Callable[[RowResult], None] | None) -> None:
        self.summary = summary
        self.progress = progress
        self.on_result = on_result
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        """No more rows are sent; the first reason is the one the run ends with."""
        with self._lock:
            self.summary.fatal = self.summary.fatal or reason

    def done(self, result: RowResult) -> None:
        # The progress file first: a row accepted is recorded whatever else fails, so a rerun does not send it again.
        if result.outcome == "accepted" and not self.summary.dry_run:
            try:
                self.progress.record(result)
            except OSError as error:
                # Sent but not recorded: only the gateway's 24 hours keep a rerun from sending it again, so stop.
                with self._lock:
                    self.summary.unrecorded.append(result.line)
                self.stop(f"cannot record accepted rows in {self.progress.path}: {error.strerror or error}")
        try:
            self.summary.add(result)
        except ScratchFailed as error:
            self.stop(str(error))
        if self.on_result is not None:
            self.on_result(result)

    @property
    def stopped(self) -> bool:
        return self.summary.fatal is not None

    def attempt(self, send_one: SendOne, row: Row, keyed: _Keyed, text: str) -> None:
        key = keyed.key
        if self.stopped:
            return  # not sent, and no result: counted among the rows not reached (`send_rows`)
        try:
            reference_id, cost = send_one(keyed.to, text, key)
        except KeyUsed:
            self.done(RowResult(row.line, row.to, "key_used", key, reason=KEY_USED_REASON))
        except RowRejected as error:
            self.done(RowResult(row.line, row.to, "rejected", key, reason=str(error)))
        except BulkSendError as error:
            # The gateway refuses the caller (a bad token) or is not there (a wrong URL): every other row would fail
            # the same way. The row was not sent: it is left, as the rows after it, for a rerun.
            self.stop(str(error))
        except Exception as error:  # one row's surprise must not lose the other rows' results
            self.done(RowResult(row.line, row.to, "rejected", key, reason=f"unexpected error: {error!r}"))
        else:
            self.done(RowResult(row.line, row.to, "accepted", key, reference_id=reference_id, cost=cost))


def send_rows(
    rows: Iterable[Row],
    *,
    sender: str,
    template: str,
    send_one: SendOne,
    progress: ProgressFile,
    concurrency: int = 4,
    on_result: Callable[[RowResult], None] | None = None,
    dry_run: bool = False,
) -> Summary:
    """Sends each row once: rows in the progress file are skipped, the rest go `concurrency` at a time.
    A dry run (`send_one` quoting instead of sending) records nothing in the progress file.

    A run that cannot go on (`Summary.fatal`: the caller refused, no gateway at the URL, the progress file or the
    temporary files unwritable) stops reading rows: the rows not sent have no result (as after Ctrl-C), so a run of
    a million rows does not end in a million rejected rows (until session 36 each was reported rejected)."""
    template_fields(template)
    summary = Summary(dry_run=dry_run)
    first_lines = FirstLines()
    run = _Run(summary, progress, on_result)
    pool = _FewAheadPool(max(1, concurrency))
    try:
        for row in rows:
            if run.stopped:
                break
            try:
                keyed = _keyed(row, sender, template, progress)
                settled = _settled_without_sending(row, keyed, template=template, first_lines=first_lines)
            except ScratchFailed as error:
                # The rows can no longer be looked up in the progress file or told apart: stop sending.
                run.stop(str(error))
                break
            if isinstance(settled, RowResult):
                run.done(settled)
            else:
                pool.submit(run.attempt, send_one, row, keyed, settled)
        pool.shutdown()
    except KeyboardInterrupt:
        # Ctrl-C: rows in flight finish and are recorded, the rest are not sent; a rerun picks them up.
        summary.interrupted = True
        _finish_in_flight(pool)
    return summary


def _finish_in_flight(pool: _FewAheadPool) -> None:
    """Waits for the rows in flight, those queued behind them cancelled. A further Ctrl-C does not cut the wait short:
    the rows' answers are recorded and the run ends in its summary (until 2026-12-07 it ended in a traceback)."""
    while True:
        try:
            pool.shutdown(cancel_futures=True)
            return
        except KeyboardInterrupt:
            continue

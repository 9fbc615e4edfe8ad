"""The CSV bulk send's pure parts: template rendering, row keys, the progress file and which rows get sent."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sms_gateway_tools.bulk_send import (
    BulkSendError,
    KeyUsed,
    ProgressFile,
    Row,
    RowRejected,
    RowResult,
    SendOne,
    all_columns_key,
    placeholders,
    progress_path,
    progress_target,
    read_rows,
    render,
    row_key,
    send_rows,
    sent_number,
    template_fields,
    written_number_key,
)

TARGET = progress_target("http://127.0.0.1:3000", "a token")


def test_a_template_is_filled_from_the_row_columns() -> None:
    assert render("Hi {name}, you owe {amount} naira", {"name": "Ada", "amount": "500", "to": "0802"}) == (
        "Hi Ada, you owe 500 naira"
    )
    assert render("Literal {{braces}} stay", {}) == "Literal {braces} stay"


def test_a_missing_or_empty_column_rejects_the_row_with_its_name() -> None:
    with pytest.raises(RowRejected, match="no value for name"):
        render("Hi {name}", {"to": "0802"})
    with pytest.raises(RowRejected, match="no value for name, city"):
        render("Hi {name} of {city}", {"name": " ", "city": ""})


def test_a_malformed_template_is_refused_for_the_whole_file() -> None:
    with pytest.raises(BulkSendError, match="malformed"):
        template_fields("Hi {name")
    with pytest.raises(BulkSendError, match=r"placeholder \{\} is not a column's name"):
        template_fields("Hi {}")
    assert template_fields("{a} {b.x} {a}") == ["a", "b.x"]


def test_review_a_template_fills_only_plain_columns_and_keeps_literal_braces() -> None:
    # A column whose name holds a dot or brackets is a column like another; {{ and }} are literal braces
    fields = {"to": "0802", "amount.due": "500", "name": "Ada"}
    assert render("{{Hi}} {name}: {amount.due} due", fields) == "{Hi} Ada: 500 due"
    # Anything else is refused for the whole file, never filled by Python's attribute or item access
    for template in ("Hi {name.upper}", "Hi {name[0]}", "Hi {name!s}", "Hi {name:10}"):
        with pytest.raises(BulkSendError, match=r"is not a column's name \(the CSV's columns: to, name\)"):
            placeholders(template, ["to", "name"])
    # And a row is never filled that way, even where the columns were not checked: it has no such column
    with pytest.raises(RowRejected, match=r"no value for name\.upper"):
        render("Hi {name.upper}", fields)


def test_the_row_key_depends_on_what_is_sent_not_on_where_the_row_is() -> None:
    row = {"to": "2348020000000", "name": "Ada"}
    key = row_key("48974", "Hi {name}", "2348020000000", row)
    # Same values in another column order (or on another line), or with columns the message does not use: the same key
    assert row_key("48974", "Hi {name}", "2348020000000", {"name": "Ada", "to": "2348020000000"}) == key
    assert row_key("48974", "Hi {name}", "2348020000000", {**row, "notes": "vip", "customer_id": "1001"}) == key
    assert key.startswith("csv-") and len(key) <= 64
    # Anything that changes the message changes the key
    assert row_key("48975", "Hi {name}", "2348020000000", row) != key
    assert row_key("48974", "Hello {name}", "2348020000000", row) != key
    assert row_key("48974", "Hi {name}", "2348020000000", {**row, "name": "Bola"}) != key
    assert row_key("48974", "Hi {name}", "2348030000000", {**row, "to": "2348030000000"}) != key


def test_rows_take_the_number_from_any_known_column_and_report_editor_line_numbers() -> None:
    rows = list(read_rows(io.StringIO("Name,Phone\nAda,0802\nBola\n")))
    assert [(r.line, r.to, r.fields["Name"]) for r in rows] == [(2, "0802", "Ada"), (3, "", "Bola")]
    with pytest.raises(BulkSendError, match="to, msisdn, phone, mobile"):
        list(read_rows(io.StringIO("name,number\nAda,0802\n")))


def test_a_header_with_a_column_twice_is_refused_but_unnamed_columns_after_the_last_are_not_columns() -> None:
    # A number column twice in another case is the same column to `number_column`: refused, naming where both are
    with pytest.raises(BulkSendError, match=r"'phone' is in the header twice \(columns 1 and 3\)"):
        list(read_rows(io.StringIO("Phone,name,phone\n0802,Ada,0803\n")))
    # While the empty cells an export leaves after its last column are no columns, however many
    rows = list(read_rows(io.StringIO("to,name,,\n0802,Ada,,\n"), "Hi {name}"))
    assert [(r.to, r.fields["name"]) for r in rows] == [("0802", "Ada")]


def test_a_file_that_is_not_valid_csv_is_refused_with_the_line_its_bad_row_starts_on() -> None:
    # A quoted cell followed by more text is not a cell the file can be read as: refused, not guessed at
    with pytest.raises(BulkSendError, match=r"^line 3 is not valid CSV: ',' expected after"):
        list(read_rows(io.StringIO('to,name\n0802,Ada\n0803,"Bola" Smith\n0804,Chidi\n')))
    # While quoted commas, a quote written "" and a cell over several lines are CSV, read as Excel writes them
    text = 'to,name\r\n0802,"Smith, Ada"\r\n0803,"Bola ""B"" Ade"\r\n0804,"two\r\nlines"\r\n0805,Dayo\r\n'
    rows = list(read_rows(io.StringIO(text, newline="")))
    assert [(r.line, r.fields["name"]) for r in rows] == [
        (2, "Smith, Ada"),
        (3, 'Bola "B" Ade'),
        (5, "two\r\nlines"),
        (6, "Dayo"),
    ]


def test_review_the_separator_is_the_one_the_header_line_uses() -> None:
    # Given files whose header line is separated by ';' (Excel where ',' is the decimal comma) or tabs, their cells
    # holding commas and quotes as those files write them
    semicolons = 'Phone;Name;Note\r\n0802;"Ada; Jr.";1,5 kg\r\n0803;Bola;\r\n'
    tabs = "to\tname\n0802\tAda, Jr.\n"
    # When they are read, then each cell is read whole by that separator
    assert [(r.line, r.to, r.fields) for r in _rows(semicolons)] == [
        (2, "0802", {"Phone": "0802", "Name": "Ada; Jr.", "Note": "1,5 kg"}),
        (3, "0803", {"Phone": "0803", "Name": "Bola", "Note": ""}),
    ]
    assert [(r.to, r.fields["name"]) for r in _rows(tabs)] == [("0802", "Ada, Jr.")]
    # And a ',' file is read by ',' even with a ';' in a cell of its header
    assert [r.fields for r in _rows('to,"name; nick"\n0802,Ada\n')] == [{"to": "0802", "name; nick": "Ada"}]


def _rows(text: str) -> list[Row]:
    return list(read_rows(io.StringIO(text)))


def _send_hi_name(rows: list[Row], progress_file: Path, sent: list[tuple[str, str]]) -> list[RowResult]:
    """Sends `Hi {name}` from 48974 one row at a time, noting each (number, key) sent."""
    return _hi_name(rows, progress_file, lambda to, text, key: (sent.append((to, key)), (f"ref-{to}", 1))[1])


def _hi_name(rows: list[Row], progress_file: Path, send_one: SendOne) -> list[RowResult]:
    """Sends `Hi {name}` from 48974 one row at a time with `send_one`."""
    summary = send_rows(
        rows,
        sender="48974",
        template="Hi {name}",
        send_one=send_one,
        progress=ProgressFile(progress_file, TARGET),
        concurrency=1,
    )
    return list(summary.results)


def test_only_rows_not_yet_accepted_are_sent_and_accepted_ones_are_recorded(tmp_path: Path) -> None:
    csv_path = tmp_path / "people.csv"
    sent: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def send_one(to: str, text: str, key: str) -> tuple[str, int | None]:
        with lock:
            sent.append((to, text, key))
        if to == "12":
            raise RowRejected("12: too short")
        return f"ref-{to}", 2

    rows = _rows("to,name\n0802,Ada\n12,Bad\n0803,\n0802,Ada\n0805,Eze\n")
    # Given a first run
    summary = send_rows(
        rows,
        sender="48974",
        template="Hi {name}",
        send_one=send_one,
        progress=ProgressFile(progress_path(csv_path), TARGET),
    )
    # Then the good rows are accepted, the others rejected with reasons, and a repeated row is sent once
    outcomes = {r.line: (r.outcome, r.reason) for r in summary.results}
    assert outcomes[2] == ("accepted", None)
    assert outcomes[3] == ("rejected", "12: too short")
    assert outcomes[4] == ("rejected", "no value for name (used by the message template)")
    assert outcomes[5][0] == "duplicate" and "line 2" in str(outcomes[5][1])
    assert outcomes[6] == ("accepted", None)
    assert sorted(text for _, text, _ in sent) == ["Hi Ada", "Hi Bad", "Hi Eze"]
    assert summary.cost == 4
    recorded = [json.loads(line) for line in progress_path(csv_path).read_text().splitlines()]
    assert sorted(entry["reference_id"] for entry in recorded) == ["ref-0802", "ref-0805"]

    # When the same file runs again (with a fresh progress reader, as a new process has)
    sent.clear()
    again = send_rows(
        rows,
        sender="48974",
        template="Hi {name}",
        send_one=send_one,
        progress=ProgressFile(progress_path(csv_path), TARGET),
    )
    # Then only the rejected row is tried again; the accepted ones are reported with their first reference ids
    assert [text for _, text, _ in sent] == ["Hi Bad"]
    already = {r.line: r.reference_id for r in again.results if r.outcome == "already_accepted"}
    assert already == {2: "ref-0802", 6: "ref-0805"}
    assert again.cost == 4


def test_a_refused_caller_stops_the_other_rows(tmp_path: Path) -> None:
    calls = 0

    def send_one(to: str, text: str, key: str) -> tuple[str, int | None]:
        nonlocal calls
        calls += 1
        raise BulkSendError("invalid credentials (HTTP 401)")

    rows = _rows("to\n" + "".join(f"080200000{n:02d}\n" for n in range(20)))
    summary = send_rows(
        rows,
        sender="48974",
        template="Hello",
        send_one=send_one,
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
        concurrency=1,
    )
    assert summary.fatal == "invalid credentials (HTTP 401)"
    assert calls == 1
    # The rows are not sent, not refused: none has a result (a campaign of a million rows is not a million rejected
    # rows listed), and none is recorded, so a rerun with the right token sends them all
    assert summary.rows == 0
    assert not (tmp_path / "p.jsonl").exists()


def test_a_progress_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    entry = {"key": "csv-a", "reference_id": "1", "cost": 1, "target": TARGET}
    path.write_text(json.dumps(entry) + '\n{"key": "csv-b", "refer')
    assert list(ProgressFile(path, TARGET).accepted) == ["csv-a"]


def test_review_a_row_accepted_after_a_progress_line_cut_short_is_not_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = _rows("to,name\n2348020000011,Ada\n2348020000012,Bola\n")
    sent: list[tuple[str, str]] = []
    # Given a run that recorded Ada's row, then was cut off while writing a line (power lost, the disk full)
    _send_hi_name(rows[:1], path, sent)
    with path.open("a") as progress:
        progress.write('{"key": "csv-cut", "line": 9, "to": "23480')
    # When the campaign is run again, and Bola's row is accepted and recorded
    results = _send_hi_name(rows, path, sent)
    assert [r.outcome for r in results] == ["already_accepted", "accepted"]
    # Then a third run sends nothing: Bola's row is recorded, not glued to the cut line and lost with it (sent
    # again under its key, which after the gateway's 24 hours sends and charges it twice)
    sent.clear()
    results = _send_hi_name(rows, path, sent)
    assert sent == []
    assert [r.outcome for r in results] == ["already_accepted", "already_accepted"]


def test_the_progress_file_counts_only_the_rows_this_gateway_and_account_accepted(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    other = progress_target("https://sms.example.com", "another token")
    lines = [{"key": "csv-a", "target": TARGET}, {"key": "csv-b", "target": other}, {"key": "csv-c"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    progress = ProgressFile(path, TARGET)
    assert list(progress.accepted) == ["csv-a"]
    # An entry from before targets were recorded may be any gateway's: it counts for none, and is kept apart
    assert list(progress.untargeted) == ["csv-c"]
    assert list(ProgressFile(path, other).accepted) == ["csv-b"]
    # The target is the URL (however its end is written) and a hash of the token, never the token
    assert progress_target("http://127.0.0.1:3000/", "s3cr3t") == progress_target("http://127.0.0.1:3000", "s3cr3t")
    assert "s3cr3t" not in progress_target("http://127.0.0.1:3000", "s3cr3t")


def test_ctrl_c_keeps_what_was_accepted_and_sends_no_more(tmp_path: Path) -> None:
    rows = _rows("to\n0802\n0803\n0804\n")

    def interrupted_after_two() -> Iterator[Row]:
        yield from rows[:2]
        raise KeyboardInterrupt

    sent: list[str] = []
    summary = send_rows(
        interrupted_after_two(),
        sender="48974",
        template="Hello",
        send_one=lambda to, text, key: (sent.append(to), (f"ref-{to}", 1))[1],
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
    )
    # Rows already in flight finish (those queued behind them may be cancelled), and each one sent is recorded
    assert summary.interrupted
    assert set(sent) <= {"0802", "0803"}
    assert len(ProgressFile(tmp_path / "p.jsonl", TARGET).accepted) == len(sent) == summary.count("accepted")


def test_review_a_second_ctrl_c_while_rows_in_flight_finish_still_ends_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sms_gateway_tools import bulk_send

    # Given a row in flight, its gateway slow to answer
    in_flight, answer = threading.Event(), threading.Event()

    def slow(to: str, text: str, key: str) -> tuple[str, int]:
        in_flight.set()
        answer.wait()
        return f"ref-{to}", 1

    def ctrl_c_once_a_row_is_in_flight() -> Iterator[Row]:
        yield from _rows("to\n0802\n")
        in_flight.wait()
        raise KeyboardInterrupt

    # And a user who presses Ctrl-C again while the run waits for it to finish
    waits: list[bool] = []
    wait_for_rows_in_flight = bulk_send._FewAheadPool.shutdown

    def ctrl_c_again(pool: bulk_send._FewAheadPool, *, cancel_futures: bool = False) -> None:
        waits.append(cancel_futures)
        if len(waits) == 1:
            answer.set()
            raise KeyboardInterrupt
        wait_for_rows_in_flight(pool, cancel_futures=cancel_futures)

    monkeypatch.setattr(bulk_send._FewAheadPool, "shutdown", ctrl_c_again)
    progress = tmp_path / "p.jsonl"
    # When the run is interrupted
    try:
        summary = send_rows(
            ctrl_c_once_a_row_is_in_flight(),
            sender="48974",
            template="Hello",
            send_one=slow,
            progress=ProgressFile(progress, TARGET),
        )
    except KeyboardInterrupt:
        summary = None
    finally:
        answer.set()
    # Then it still ends in its summary (not a traceback), the row in flight finished, counted and recorded
    assert summary is not None, "the second Ctrl-C escaped send_rows"
    assert summary.interrupted
    assert summary.count("accepted") == 1
    assert list(ProgressFile(progress, TARGET).accepted) == [next(summary.results).key]


def test_review_a_big_file_is_read_only_a_few_rows_ahead_of_the_sends(tmp_path: Path) -> None:
    # Given a campaign of many rows and a gateway slow to answer (held until a moment after the run starts)
    answered = threading.Event()
    threading.Timer(0.5, answered.set).start()
    in_flight = {"read": 0, "sent": 0, "most_ahead": 0}
    lock = threading.Lock()

    def rows() -> Iterator[Row]:
        for n in range(2000):
            with lock:
                in_flight["read"] += 1
                in_flight["most_ahead"] = max(in_flight["most_ahead"], in_flight["read"] - in_flight["sent"])
            yield Row(line=n + 2, to=f"23480200{n:05d}", fields={"to": f"23480200{n:05d}"})

    def send_one(to: str, text: str, key: str) -> tuple[str, int]:
        answered.wait()
        with lock:
            in_flight["sent"] += 1
        return "ref", 1

    # When it is sent 4 rows at a time
    summary = send_rows(
        rows(), sender="48974", template="Hello", send_one=send_one, progress=ProgressFile(tmp_path / "p", TARGET)
    )
    # Then every row is sent, and rows are read from the file only a few ahead of those answered: not all of them
    # held in memory (each with its queued send) while the first ones wait, which a million-row file cannot afford
    assert summary.count("accepted") == 2000
    assert in_flight["most_ahead"] <= 16


def test_a_column_the_message_does_not_use_changes_nothing_that_was_sent(tmp_path: Path) -> None:
    progress = progress_path(tmp_path / "customers.csv")
    sent: list[tuple[str, str, str]] = []

    def send_one(to: str, text: str, key: str) -> tuple[str, int | None]:
        sent.append((to, text, key))
        return f"ref-{to}", 1

    def run(text: str) -> None:
        _hi_name(_rows(text), progress, send_one)

    # Given a campaign whose two rows were accepted (docs/cli.md: the key is "made from what the row sends")
    run("to,name\n2348020000011,Ada\n2348020000012,Bola\n")
    assert len(sent) == 2
    # When the operator re-exports the file from the CRM with one more column the message does not use (or with
    # a rejected row fixed and a `fixed` mark added), and runs the same command again, as cli.md tells them to
    sent.clear()
    run("to,name,notes\n2348020000011,Ada,\n2348020000012,Bola,vip\n")
    # Then nothing is sent again: Ada and Bola already got "Hi Ada" / "Hi Bola", and were charged for it; a new
    # key per row makes the gateway send and charge both again, and the progress file does not know them either
    assert sent == []


def test_two_rows_with_the_same_number_and_variables_are_sent_once(tmp_path: Path) -> None:
    sent: list[str] = []
    summary = send_rows(
        _rows("customer_id,to,name\n1001,2348020000011,Ada\n1002,2348020000011,Ada\n"),
        sender="48974",
        template="Hi {name}",
        send_one=lambda to, text, key: (sent.append(text), (f"ref-{to}", 1))[1],
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
        concurrency=1,
    )
    # docs/cli.md: "Two rows with the same values (the same number and the same variables) would be the same
    # message: the second is reported as a duplicate and sent once". A CRM export listing a customer twice (two
    # customer ids) sends the same number the same text twice, charged twice
    assert sent == ["Hi Ada"]
    assert [r.outcome for r in summary.results] == ["accepted", "duplicate"]


def test_review_one_number_written_two_ways_with_the_same_variables_is_sent_once(tmp_path: Path) -> None:
    sent: list[str] = []
    # Given a CRM export listing Ada twice, once with the '+' and once without (cli.md: numbers "in any form a send
    # takes (+234..., 234..., the account's local form)"; the gateway sends both to +2348020000011)
    summary = send_rows(
        _rows("customer_id,to,name\n1001,+2348020000011,Ada\n1002,2348020000011,Ada\n"),
        sender="48974",
        template="Hi {name}",
        send_one=lambda to, text, key: (sent.append(text), (f"ref-{to}", 1))[1],
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
        concurrency=1,
    )
    # Then it is the same message to the same handset: sent and charged once, the second row a duplicate
    assert sent == ["Hi Ada"]
    assert [r.outcome for r in summary.results] == ["accepted", "duplicate"]


def test_the_row_key_takes_the_number_however_it_is_written_in_international_form() -> None:
    row = {"name": "Ada"}
    key = row_key("48974", "Hi {name}", "2348020000011", row)
    for written in (
        "+2348020000011",
        "+234 802-000 0011",
        "(+234) 802.000.0011",
        "002348020000011",
        " 234 802 000 0011",
    ):
        assert row_key("48974", "Hi {name}", written, row) == key, written
    # A national form needs the account's country, which the client API does not tell: it stays its own number
    assert row_key("48974", "Hi {name}", "08020000011", row) != key
    assert row_key("48974", "Hi {name}", "+23480200000111", row) != key


def test_rows_the_previous_version_recorded_under_the_number_as_written_are_not_sent_again(tmp_path: Path) -> None:
    # Given a progress file the previous version wrote, its keys made from the number as written: Ada accepted by
    # this gateway as +234..., Bola by one that recorded no target as 00234...
    path = tmp_path / "p.jsonl"
    ada = written_number_key("48974", "Hi {name}", "+2348020000011", {"name": "Ada"})
    bola = written_number_key("48974", "Hi {name}", "002348020000012", {"name": "Bola"})
    lines = [
        {"key": ada, "to": "+2348020000011", "reference_id": "ref-ada", "cost": 1, "target": TARGET},
        {"key": bola, "to": "002348020000012", "reference_id": "b"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # And the CSV re-exported without the '+' and the '00'
    rows = _rows("to,name\n2348020000011,Ada\n2348020000012,Bola\n+234 802 000 0011,Ada\n")
    sent: list[tuple[str, str]] = []

    def run() -> list[RowResult]:
        return _send_hi_name(rows, path, sent)

    # When this version runs it
    results = run()
    # Then Ada counts as accepted (not sent and charged again), her second row a duplicate; Bola goes again under the
    # key the gateway knows her by (it answers its first answer for 24 hours)
    outcomes = [(r.line, r.outcome, r.reference_id) for r in results]
    assert outcomes[0] == (2, "already_accepted", "ref-ada")
    assert sorted(outcomes)[2][:2] == (4, "duplicate")
    assert sent == [("2348020000012", bola)]
    # And a rerun sends nothing
    sent.clear()
    run()
    assert sent == []


def test_review_a_row_an_all_columns_version_accepted_is_not_sent_again_when_its_number_is_written_another_way(
    tmp_path: Path,
) -> None:
    # Given a progress file an earlier version wrote (every column in the key): Ada accepted by this gateway as +234...
    path = tmp_path / "p.jsonl"
    ada = all_columns_key("48974", "Hi {name}", {"to": "+2348020000011", "name": "Ada"})
    line = {"key": ada, "line": 2, "to": "+2348020000011", "reference_id": "ref-ada", "cost": 1, "target": TARGET}
    path.write_text(json.dumps(line) + "\n")
    # And the same CSV re-exported without the '+' (cli.md: "re-exporting the file ... with the numbers written
    # another way (`+` dropped or added, spaces), does not change the key of a row already sent")
    sent: list[tuple[str, str]] = []
    results = _send_hi_name(_rows("to,name\n2348020000011,Ada\n"), path, sent)
    # Then Ada counts as accepted: not sent and charged again
    assert sent == []
    assert results[0].outcome == "already_accepted"


class KeyedGateway:
    """A gateway as the 9bits dialect behaves: a key's first request is sent and its answer kept; the very same
    request under the key again gets that answer and sends nothing; another body under it (its `to` written
    otherwise) is refused 409 "used for a different request", which the CLI's sender raises as KeyUsed."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.first: dict[str, tuple[str, tuple[str | None, int | None]]] = {}

    def __call__(self, to: str, text: str, key: str) -> tuple[str | None, int | None]:
        if key in self.first:
            first_to, answer = self.first[key]
            if first_to != to:
                raise KeyUsed("this Idempotency-Key was used for a different request")
            return answer
        self.sent.append(to)
        self.first[key] = (to, (f"ref-{len(self.sent)}", 1))
        return self.first[key][1]

    def run(self, csv_text: str, progress: Path) -> list[RowResult]:
        return _hi_name(_rows(csv_text), progress, self)


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("+2348020000011", "+234 802-000 0011"),
        ("+234 802-000 0011", "002348020000011"),
        ("(+234) 802 000 0011", "00 234 802 000 0011"),
        ("2348020000011", "234 802 000 0011"),
        ("0802 000 0011", "08020000011"),
    ],
)
def test_review_a_re_export_sent_under_the_same_key_gets_the_first_answer_not_a_key_conflict(
    tmp_path: Path, first: str, again: str
) -> None:
    gateway = KeyedGateway()
    # Given Ada sent from customers.csv
    assert [r.outcome for r in gateway.run(f"to,name\n{first},Ada\n", tmp_path / "customers.csv.sent.jsonl")] == [
        "accepted"
    ]
    # When the CRM's re-export, her number written another way the gateway reads as the same, is sent the same day
    # as customers-2.csv (its own progress file: cli.md, the gateway keeps each key's first answer for 24 hours)
    again_results = gateway.run(f"to,name\n{again},Ada\n", tmp_path / "customers-2.csv.sent.jsonl")
    # Then Ada is not sent again and her row reads accepted with the first answer, not rejected
    assert len(gateway.sent) == 1
    assert (again_results[0].outcome, again_results[0].reference_id) == ("accepted", "ref-1"), again_results[0]
    # And the row and its progress line keep the number as the file writes it
    assert again_results[0].to == again


def test_a_number_is_sent_in_one_form_the_gateway_reads_as_written() -> None:
    # International forms go as '+' and digits; bare digits stay bare (national or international: only the
    # account's country tells, as the gateway reads them), never given a '+'; what is no number goes as written
    assert sent_number("+234 802-000 0011") == "+2348020000011"
    assert sent_number("(+234) 8020000011") == "+2348020000011"
    assert sent_number("002348020000011") == "+2348020000011"
    assert sent_number("234 802 000 0011") == "2348020000011"
    assert sent_number("(951) 350-0049") == "9513500049"
    assert sent_number("0802 000 0011") == "08020000011"
    assert sent_number("0802-CALL-ME") == "0802-CALL-ME"


@pytest.mark.parametrize(
    ("first", "again"), [("+2348020000011", "2348020000011"), ("2348020000011", "002348020000011")]
)
def test_a_row_whose_key_was_used_with_its_number_written_another_way_is_reported_so_and_not_sent(
    tmp_path: Path, first: str, again: str
) -> None:
    # Given Ada sent from customers.csv with her number in one form, then the re-export with it in the other: one key
    # (bare digits are taken as international for the key), but bare digits cannot be sent as '+' (the gateway may
    # read them as a national number of the account's country), so the bodies differ
    gateway = KeyedGateway()
    gateway.run(f"to,name\n{first},Ada\n", tmp_path / "customers.csv.sent.jsonl")
    progress = tmp_path / "customers-2.csv.sent.jsonl"
    [result] = gateway.run(f"to,name\n{again},Ada\n", progress)
    # Then she is not sent again, and the row says why, apart from the rows the gateway refused
    assert len(gateway.sent) == 1
    assert result.outcome == "key_used"
    assert "written another way" in (result.reason or "")
    assert "status" in (result.reason or "")
    # And nothing is recorded as accepted: the answer was not seen
    assert not progress.exists()


def test_a_row_an_older_version_recorded_without_a_target_goes_again_as_that_line_wrote_its_number(
    tmp_path: Path,
) -> None:
    # Given a line a version before targets wrote: Ada sent as '+234 802-000 0011' under the number-as-written key
    path = tmp_path / "p.jsonl"
    old_key = written_number_key("48974", "Hi {name}", "+234 802-000 0011", {"name": "Ada"})
    path.write_text(json.dumps({"key": old_key, "line": 2, "to": "+234 802-000 0011", "reference_id": "r"}) + "\n")
    gateway = KeyedGateway()
    gateway.first[old_key] = ("+234 802-000 0011", ("r", 1))
    # When the re-export writes it '+2348020000011'
    [result] = gateway.run("to,name\n+2348020000011,Ada\n", path)
    # Then it goes under the old key as the line wrote it: the gateway's first answer, nothing sent again
    assert gateway.sent == []
    assert (result.outcome, result.reference_id, result.key) == ("accepted", "r", old_key)
    # But a line whose spelling the gateway may read as another number (bare digits) is not sent as that line wrote
    # it: the row's own form goes, and the gateway's refusal of it under the key is told as such
    path.write_text(json.dumps({"key": old_key, "line": 2, "to": "+234 802-000 0011", "reference_id": "r"}) + "\n")
    [bare] = gateway.run("to,name\n2348020000011,Ada\n", path)
    assert gateway.sent == []
    assert bare.outcome == "key_used"


def test_rows_an_earlier_version_recorded_under_its_all_columns_key_are_not_sent_again(tmp_path: Path) -> None:
    # Given a progress file an earlier version wrote, its keys a hash of every column: Ada accepted by this gateway,
    # Bola by one that recorded no target (before targets were recorded)
    path = tmp_path / "p.jsonl"
    rows = _rows("to,name,notes\n2348020000011,Ada,\n2348020000012,Bola,vip\n2348020000013,Chidi,\n")
    ada, bola = (all_columns_key("48974", "Hi {name}", row.fields) for row in rows[:2])
    lines = [{"key": ada, "reference_id": "ref-ada", "cost": 1, "target": TARGET}, {"key": bola, "reference_id": "b"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sent: list[tuple[str, str]] = []

    def run() -> list[RowResult]:
        return _send_hi_name(rows, path, sent)

    # When this version runs the same file
    results = run()
    # Then Ada counts as accepted (not sent and charged again); Bola goes again under the key the gateway knows her
    # by (it answers its first answer for 24 hours); Chidi, never sent, goes under the key of what the row sends
    assert (results[0].line, results[0].outcome, results[0].reference_id) == (2, "already_accepted", "ref-ada")
    chidi = row_key("48974", "Hi {name}", "2348020000013", rows[2].fields)
    assert sent == [("2348020000012", bola), ("2348020000013", chidi)]
    # And a rerun sends nothing: Bola is now recorded for this gateway under her old key
    sent.clear()
    run()
    assert sent == []


@pytest.mark.parametrize("again", ["+234 (0) 802 000 0011", "+234 0802 000 0011"])
def test_review_a_re_export_writing_the_trunk_zero_after_the_country_code_is_not_sent_again(
    tmp_path: Path, again: str
) -> None:
    from sms_gateway.domain.msisdn import parse_msisdn

    # The gateway reads both forms as one number (phonenumbers drops the trunk '0' after the calling code)
    assert parse_msisdn(again).e164 == parse_msisdn("+2348020000011").e164 == "+2348020000011"
    gateway = KeyedGateway()
    # Given Ada sent from customers.csv
    gateway.run("to,name\n+2348020000011,Ada\n", tmp_path / "customers.csv.sent.jsonl")
    # When the CRM's re-export writes her number the common '+234 (0) ...' way, sent the same day (its own progress
    # file; cli.md: "re-exporting the file ... with the numbers written another way ... does not change the key of
    # a row already sent", and international forms "are one" number)
    results = gateway.run(f"to,name\n{again},Ada\n", tmp_path / "customers-2.csv.sent.jsonl")
    # Then Ada is not sent and charged a second time
    assert len(gateway.sent) == 1, (gateway.sent, results)


def test_review_one_number_with_and_without_the_trunk_zero_in_one_file_is_sent_once(tmp_path: Path) -> None:
    sent: list[str] = []
    summary = send_rows(
        _rows("customer_id,to,name\n1001,+2348020000011,Ada\n1002,+234 (0)802 000 0011,Ada\n"),
        sender="48974",
        template="Hi {name}",
        send_one=lambda to, text, key: (sent.append(to), (f"ref-{to}", 1))[1],
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
        concurrency=1,
    )
    assert [r.outcome for r in summary.results] == ["accepted", "duplicate"], sent


def test_a_number_written_with_the_trunk_zero_after_its_country_code_is_keyed_and_sent_as_the_gateway_reads_it() -> (
    None
):
    row = {"name": "Ada"}
    # A '+' or '00' form names its country, so the trunk '0' the gateway drops is dropped from the key and the request
    for written, read in (
        ("+234 (0)802 000 0011", "2348020000011"),
        ("00234 0802 000 0011", "2348020000011"),
        ("+44 (0)7911 123456", "447911123456"),
    ):
        assert row_key("48974", "Hi {name}", written, row) == row_key("48974", "Hi {name}", read, row), written
        assert sent_number(written) == "+" + read
    # Bare digits and national forms are keyed as before: without the account's country they cannot be read
    assert row_key("48974", "Hi {name}", "23408020000011", row) != row_key("48974", "Hi {name}", "2348020000011", row)
    assert sent_number("08020000011") == "08020000011"


def test_a_row_recorded_under_its_key_with_the_trunk_zero_kept_is_not_sent_again(tmp_path: Path) -> None:
    # Given a progress file the previous version wrote: Ada accepted as '+234 (0)802 ...', keyed with the '0' kept
    path = tmp_path / "p.jsonl"
    ada = written_number_key("48974", "Hi {name}", "23408020000011", {"name": "Ada"})
    line = {"key": ada, "line": 2, "to": "+234 (0)802 000 0011", "reference_id": "ref-ada", "cost": 1}
    path.write_text(json.dumps({**line, "target": TARGET}) + "\n")
    sent: list[tuple[str, str]] = []
    # When this version runs the file again, or a re-export writing her number without the '0'
    results = _send_hi_name(_rows("to,name\n+234 (0)802 000 0011,Ada\n+2348020000011,Ada\n"), path, sent)
    # Then Ada counts as accepted, not sent and charged again
    assert sent == []
    assert [r.outcome for r in results] == ["already_accepted", "duplicate"]
    # And a line an older version recorded without a target goes again under that key, as the line wrote the number
    path.write_text(json.dumps(line) + "\n")
    _send_hi_name(_rows("to,name\n+2348020000011,Ada\n"), path, sent)
    assert sent == [("+234 (0)802 000 0011", ada)]


def test_review_a_duplicate_of_a_row_that_was_not_sent_does_not_claim_it_was_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools.client_commands import _print_summary

    # Given a CRM export listing Ada twice, and a gateway that refuses her number
    def refuse(to: str, text: str, key: str) -> tuple[str, int]:
        raise RowRejected("2348020000011 opted out of 48974 (STOP)")

    summary = send_rows(
        _rows("customer_id,to,name\n1001,2348020000011,Ada\n1002,2348020000011,Ada\n"),
        sender="48974",
        template="Hi {name}",
        send_one=refuse,
        progress=ProgressFile(tmp_path / "p.jsonl", TARGET),
        concurrency=1,
    )
    # When the run's summary is read
    [first, repeat] = summary.results
    _print_summary(summary, tmp_path / "p.jsonl")
    printed = capsys.readouterr().out
    # Then the repeat is told apart as the same message as line 2, but nothing says it was sent: it was not
    assert (first.outcome, repeat.outcome) == ("rejected", "duplicate")
    assert "line 2" in str(repeat.reason)
    assert "sent once" not in str(repeat.reason) and "sent once" not in printed, (repeat.reason, printed)

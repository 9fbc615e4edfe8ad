"""FIFO records of one invocation: concurrent across message groups, in order within a group, failures isolated."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from sms_gateway.logic.fifo import OVERLAP_WINDOW, handle_in_group_order


@dataclass(frozen=True)
class Record:
    name: str
    group: str
    batch: str = ""
    fails: bool = False


class Handler:
    """Handles a record in a few loop turns, noting when each starts and ends and how many run at once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_overall = 0

    async def __call__(self, record: Record) -> None:
        self.events.append(("start", record.name))
        self.running[record.group] = self.running.get(record.group, 0) + 1
        self.peak[record.group] = max(self.peak.get(record.group, 0), self.running[record.group])
        self.peak_overall = max(self.peak_overall, sum(self.running.values()))
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if record.fails:
                raise RuntimeError(f"{record.name} failed")
        finally:
            self.running[record.group] -= 1
            self.events.append(("end", record.name))

    def started(self) -> list[str]:
        return [name for kind, name in self.events if kind == "start"]

    def index(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))


def run(records: list[Record], handler: Handler) -> list[str]:
    failed = asyncio.run(
        handle_in_group_order(
            records,
            group_of=lambda record: record.group,
            may_overlap=lambda before, record: bool(before.batch) and before.batch == record.batch,
            handle=handler,
        )
    )
    return [record.name for record in failed]


def test_a_groups_records_run_one_after_another_while_groups_run_side_by_side():
    # Given two accounts' groups of three batches each (no two records of a group in the same batch)
    records = [Record(f"{group}{n}", group, batch=f"{group}-batch{n}") for n in range(3) for group in "ab"]
    handler = Handler()
    # When the invocation handles them
    failed = run(records, handler)
    # Then all succeed, each group's records ran strictly in order, one at a time, and the groups overlapped
    assert failed == []
    for group in "ab":
        assert [name for name in handler.started() if name.startswith(group)] == [f"{group}0", f"{group}1", f"{group}2"]
        assert handler.index("end", f"{group}0") < handler.index("start", f"{group}1")
        assert handler.index("end", f"{group}1") < handler.index("start", f"{group}2")
        assert handler.peak[group] == 1
    assert handler.peak_overall == 2


def test_records_of_one_batch_overlap_within_the_window_and_the_next_batch_waits_for_all_of_them():
    # Given one group: four records of one batch, then a record of the next batch
    records = [Record(f"r{n}", "a", batch="b1") for n in range(4)] + [Record("next", "a", batch="b2")]
    handler = Handler()
    failed = run(records, handler)
    # Then records of the batch ran at most OVERLAP_WINDOW at a time, each starting only once the one
    # OVERLAP_WINDOW places before it ended; the next batch started after every record of the one before ended
    assert failed == []
    assert handler.peak["a"] == OVERLAP_WINDOW == 2
    assert handler.started() == ["r0", "r1", "r2", "r3", "next"]
    assert handler.index("end", "r0") < handler.index("start", "r2")
    assert handler.index("end", "r1") < handler.index("start", "r3")
    assert max(handler.index("end", f"r{n}") for n in range(4)) < handler.index("start", "next")


def test_a_failure_holds_back_the_rest_of_its_group_only():
    # Given two groups, the second record of group a failing
    records = [
        Record("a0", "a", batch="a-0"),
        Record("b0", "b", batch="b-0"),
        Record("a1", "a", batch="a-1", fails=True),
        Record("b1", "b", batch="b-1"),
        Record("a2", "a", batch="a-2"),
        Record("a3", "a", batch="a-3"),
        Record("b2", "b", batch="b-2"),
    ]
    handler = Handler()
    failed = run(records, handler)
    # Then the failed record and the later ones of its group are reported, in the delivered order, and those
    # later ones never ran; the other group ran to the end
    assert failed == ["a1", "a2", "a3"]
    assert "a2" not in handler.started() and "a3" not in handler.started()
    assert [name for name in handler.started() if name.startswith("b")] == ["b0", "b1", "b2"]


def test_a_record_overlapping_a_failed_one_reports_its_own_outcome_and_stops_the_group_after_it():
    # Given a batch of three records in one group, the first failing
    records = [Record("r0", "a", batch="b", fails=True), Record("r1", "a", batch="b"), Record("r2", "a", batch="b")]
    handler = Handler()
    failed = run(records, handler)
    # Then the one already started alongside it finished and is not reported (its messages went out); the one not
    # yet started is held back with the failed one
    assert failed == ["r0", "r2"]
    assert handler.started() == ["r0", "r1"]


class Killed(BaseException):
    """A dying container."""


def test_a_dying_container_stops_every_record_and_propagates_as_itself():
    # Given two groups, one record of which dies mid-way while the other group's record is still waiting
    waiting_ended = False

    async def handle(record: Record) -> None:
        nonlocal waiting_ended
        if record.name == "dies":
            await asyncio.sleep(0)
            raise Killed
        try:
            await asyncio.sleep(10)
        finally:
            waiting_ended = True

    records = [Record("dies", "a"), Record("waits", "b"), Record("after", "a")]
    # When the invocation runs
    with pytest.raises(Killed):
        asyncio.run(
            handle_in_group_order(records, group_of=lambda r: r.group, may_overlap=lambda *_: False, handle=handle)
        )
    # Then the other record was stopped (cancelled), not left to run on in the container's loop
    assert waiting_ended

"""FIFO queue records of one invocation handled concurrently across message groups, in order within a group."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
# Records of one group in progress at once when they may overlap: the next starts while the one before drains its
# last submits, which is all it takes to keep the in-flight limit full; more would only run further ahead.
OVERLAP_WINDOW = 2


async def handle_in_group_order(
    records: Sequence[T],
    *,
    group_of: Callable[[T], str],
    may_overlap: Callable[[T, T], bool],
    handle: Callable[[T], Awaitable[object]],
) -> list[T]:
    """Handles `records` (in the order the queue delivered them) and returns those to report as failed, in that
    order: the ones whose handling raised an Exception, and every record of a group after its first failure, which
    is then not handled at all (SQS FIFO's partial batch contract: a group's later records must not overtake it).

    Groups run concurrently. Within a group a record starts only after the one before it finished, unless
    `may_overlap(before, record)`: then it starts as soon as the record `OVERLAP_WINDOW` places before it finished,
    and its own outcome is reported whatever the overlapped record's turns out to be. A BaseException that is not
    an Exception (a dying container) cancels everything still running and propagates as itself.
    """
    failed: set[int] = set()
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(group_of(record), []).append(index)

    async def handle_one(index: int) -> None:
        try:
            await handle(records[index])
        except Exception:
            # Reported, so SQS returns exactly this record (the handler logs what it knows of the failure).
            failed.add(index)

    async def run_group(indexes: list[int], tasks: asyncio.TaskGroup) -> None:
        running: list[asyncio.Task[None]] = []
        for position, index in enumerate(indexes):
            still_running = 0
            if position > 0 and may_overlap(records[indexes[position - 1]], records[index]):
                still_running = OVERLAP_WINDOW - 1
            finish = running[: max(len(running) - still_running, 0)]
            running = running[len(finish) :]
            if finish:
                await asyncio.wait(finish)
            if any(earlier in failed for earlier in indexes[:position]):
                # Records already started finish on their own; nothing more of this group starts.
                failed.update(indexes[position:])
                return
            # In the task group, so that a dying container's BaseException cancels every other record too.
            running.append(tasks.create_task(handle_one(index)))

    try:
        async with asyncio.TaskGroup() as tasks:
            for indexes in groups.values():
                tasks.create_task(run_group(indexes, tasks))
    except BaseExceptionGroup as crash:
        raise crash.exceptions[0] from None
    return [records[index] for index in sorted(failed)]

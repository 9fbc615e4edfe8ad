"""Scratch storage on disk for what grows with a bulk send's rows, so that a run's memory does not."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# SQLite's page cache per database, in KiB: what a scratch database holds in memory, however many rows it holds.
CACHE_KIB = 2048
# Rows read from a scratch database at a time when going through many (`Scratch.paged`).
PAGE_ROWS = 500
# Where SQLite puts its temporary files on Unix: the first of these that is a directory it may write in.
_TEMPORARY_DIRECTORIES = ("SQLITE_TMPDIR", "TMPDIR", "/var/tmp", "/usr/tmp", "/tmp", ".")  # noqa: S108 - named only


class ScratchFailed(Exception):
    """A scratch database cannot go on (its temporary directory full or not writable): what the run kept in it is
    no longer whole, so the run stops."""


def temporary_directory() -> str:
    """The directory SQLite keeps its temporary files in (`_TEMPORARY_DIRECTORIES`), for an error to name."""
    for name in _TEMPORARY_DIRECTORIES:
        directory = os.environ.get(name) if name.isupper() else name
        if directory and os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return directory
    return "none writable"


@contextmanager
def _failing_clearly() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        raise ScratchFailed(
            f"cannot keep the run's rows in a temporary file ({error}; in {temporary_directory()}): free space "
            "there or set SQLITE_TMPDIR to a directory with room, and run the same command again"
        ) from error


class Scratch:
    """A private SQLite database in a temporary file that SQLite deletes when it is closed (the "" database; under
    $SQLITE_TMPDIR, $TMPDIR or /var/tmp), used by several threads. Nothing in it outlives the run: no journal, no
    sync, one transaction never committed. Any failure of SQLite's (a full or unwritable temporary directory) is
    ScratchFailed, which says so and where."""

    def __init__(self, schema: str) -> None:
        self._lock = threading.Lock()
        with _failing_clearly():
            self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            self._db.executescript(
                f"PRAGMA cache_size = -{CACHE_KIB}; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; {schema}"
            )
            self._db.execute("BEGIN")

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """The rows it changed."""
        with self._lock, _failing_clearly():
            return self._db.execute(sql, parameters).rowcount

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The answer's rows: for a few only (a lookup, a count)."""
        with self._lock, _failing_clearly():
            return self._db.execute(sql, parameters).fetchall()

    def paged(
        self,
        sql: str,
        parameters: Sequence[Any],
        start: Sequence[Any],
        after: Callable[[tuple[Any, ...]], Sequence[Any]],
    ) -> Iterator[tuple[Any, ...]]:
        """Every row of `sql`, a page at a time, so that neither the rows nor the lock are held between pages: `sql`
        takes `parameters`, then the position to go on after (`start` first, then `after` of the page's last row),
        and ends in ORDER BY that position and LIMIT ?."""
        position = start
        while True:
            page = self.rows(sql, [*parameters, *position, PAGE_ROWS])
            yield from page
            if len(page) < PAGE_ROWS:
                return
            position = after(page[-1])

    def close(self) -> None:
        with self._lock:
            self._db.close()

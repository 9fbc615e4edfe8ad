"""Scratch storage on disk for what grows with a bulk send's rows, so that a run's memory does not."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# SQLite's page cache per database, in KiB: what a scratch database holds in memory, however many rows it holds.
CACHE_KIB = 2048
# Rows read from a scratch database at a time when going through many (`Scratch.paged`).
PAGE_ROWS = 500


class Scratch:
    """A private SQLite database in a temporary file that SQLite deletes when it is closed (the "" database; under
    $SQLITE_TMPDIR, $TMPDIR or /var/tmp), used by several threads. Nothing in it outlives the run: no journal, no
    sync, one transaction never committed."""

    def __init__(self, schema: str) -> None:
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.executescript(
            f"PRAGMA cache_size = -{CACHE_KIB}; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; {schema}"
        )
        self._db.execute("BEGIN")

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """The rows it changed."""
        with self._lock:
            return self._db.execute(sql, parameters).rowcount

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The answer's rows: for a few only (a lookup, a count)."""
        with self._lock:
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

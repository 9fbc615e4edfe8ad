"""Keeps CloudWatch EMF lines (Powertools Metrics prints them to stdout) off the local stack's console."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, TextIO, cast


def is_emf_document(line: str) -> bool:
    """A CloudWatch embedded-metric-format document (what Powertools Metrics prints)."""
    return '"_aws"' in line and '"CloudWatchMetrics"' in line


class MetricsDiverter:
    """A stdout wrapper: whole lines that are EMF documents go to a file, everything else passes through."""

    def __init__(self, target: TextIO, sink: TextIO) -> None:
        self._target = target
        self._sink = sink
        self._local = threading.local()
        self._sink_lock = threading.Lock()

    def write(self, text: str) -> int:
        buffer: str = getattr(self._local, "buffer", "")
        if not buffer and not text.startswith("{"):
            return self._target.write(text)
        buffer += text
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            self._route(line + "\n")
        if buffer and not buffer.startswith("{"):
            self._target.write(buffer)
            buffer = ""
        self._local.buffer = buffer
        return len(text)

    def _route(self, line: str) -> None:
        if is_emf_document(line):
            with self._sink_lock:
                if not self._sink.closed:
                    self._sink.write(line)
                    self._sink.flush()
        else:
            self._target.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class DivertedStdout:
    """Installs a `MetricsDiverter` as sys.stdout until `restore()`."""

    def __init__(self, metrics_file: Path) -> None:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        self._sink = metrics_file.open("a", encoding="utf-8")
        self._original = sys.stdout
        self._diverter = MetricsDiverter(sys.stdout, self._sink)
        sys.stdout = cast(TextIO, self._diverter)

    def restore(self) -> None:
        if sys.stdout is cast(TextIO, self._diverter):
            sys.stdout = self._original
        self._sink.close()

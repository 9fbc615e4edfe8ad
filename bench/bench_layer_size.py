"""Layer size: the CoreLayer `sam build` makes, unzipped and zipped, with its largest packages."""

from __future__ import annotations

import io
import subprocess
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import REPO

TARGET_MB = 20.0
BUILT_LAYER = REPO / ".aws-sam" / "build" / "CoreLayer"
SAM = REPO / ".venv-sam" / "bin" / "sam"
# What the built layer is made from: a change to any of these makes the last build stale.
SOURCES = [REPO / "template.yaml", REPO / "layers" / "core"]
MB = 1_000_000


def _files(root: Path) -> Iterable[Path]:
    """Every file under `root`, as sam deploy zips a layer: the bytecode the build compiles into __pycache__ (the
    gateway's package) ships and counts (until session 38 it was skipped, 1.65 MB then)."""
    return (path for path in root.rglob("*") if path.is_file())


def _source_files(root: Path) -> Iterable[Path]:
    """What the build reads: not the bytecode a test run leaves beside the sources (the build drops it)."""
    return (path for path in _files(root) if "__pycache__" not in path.parts)


def newest_source_mtime() -> float:
    newest = 0.0
    for source in SOURCES:
        for path in [source] if source.is_file() else _source_files(source):
            newest = max(newest, path.stat().st_mtime)
    return newest


def build_is_fresh() -> bool:
    """The built layer exists and was written after every file it is made from."""
    python = BUILT_LAYER / "python"
    if not python.is_dir():
        return False
    built = min(path.stat().st_mtime for path in [python, *python.iterdir()])
    return built > newest_source_mtime()


def build() -> float:
    """`make build` (sam build for the whole template); returns the seconds it took."""
    started = time.perf_counter()
    completed = subprocess.run(["make", "build"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"make build failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def package_sizes(python: Path) -> list[tuple[str, int, int]]:
    """(top-level entry, bytes, files) for each package, module and metadata directory, largest first."""
    sizes = []
    for entry in python.iterdir():
        files = [entry] if entry.is_file() else list(_files(entry))
        sizes.append((entry.name, sum(path.stat().st_size for path in files), len(files)))
    return sorted(sizes, key=lambda item: item[1], reverse=True)


def zipped_size(root: Path) -> int:
    """The size of the layer's zip as sam deploy would upload it (deflate, the same files)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(_files(root)):
            archive.write(path, path.relative_to(root))
    return buffer.tell()


def run(quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": "layer_size",
        "title": "Layer size after sam build",
        "command": ".venv/bin/python -m bench --only layer_size",
        "target": f"CoreLayer under {TARGET_MB:.0f} MB unzipped",
        "met": None,
        "rows": [],
        "notes": [],
    }
    notes: list[str] = result["notes"]
    if build_is_fresh():
        notes.append("Reused .aws-sam/build/CoreLayer: it is newer than template.yaml and every file in layers/core.")
    elif quick:
        notes.append("Quick mode does not build and the built layer is missing or older than its sources: not judged.")
        return result
    else:
        seconds = build()
        notes.append(f"Built with `make build` (sam build, layers/core/Makefile) in {seconds:.0f} s.")

    python = BUILT_LAYER / "python"
    sizes = package_sizes(python)
    total = sum(size for _, size, _ in sizes)
    files = sum(count for _, _, count in sizes)
    zipped = zipped_size(BUILT_LAYER)
    result["rows"] = [
        {"package": name, "mb": round(size / MB, 2), "share": f"{size / total:.0%}", "files": count}
        for name, size, count in sizes[:10]
    ] + [{"package": "TOTAL (unzipped)", "mb": round(total / MB, 2), "share": "100%", "files": files}]
    result["met"] = total / MB < TARGET_MB
    result["unzipped_mb"] = round(total / MB, 2)
    result["zipped_mb"] = round(zipped / MB, 2)
    notes += [
        f"Unzipped: {total / MB:.2f} MB in {files} files (sum of file sizes, what Lambda's 250 MB limit counts);"
        f" zipped (deflate): {zipped / MB:.2f} MB.",
        "One measurement: the build is deterministic for pinned wheels, so repeating it would give the same bytes.",
        "boto3, botocore, s3transfer, jmespath, python-dateutil, six and urllib3 come from the Lambda runtime and"
        " phonenumbers' geocoder and time-zone data are never imported, so layers/core/Makefile drops them"
        " (docs/layer.md), with the modules of Powertools and pydantic that no import can reach from the gateway"
        " (0.8 MB, since 2026-12-07: layers/core/reachable_modules.py) and wrapt's C source. Before that, the"
        " python3.13 build method made 64.0 MB (botocore 25.1 MB, phonenumbers 21.9 MB of which geodata 19.5 MB).",
    ]
    return result

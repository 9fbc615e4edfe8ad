"""What the CoreLayer is made of: its requirements, their dependency closure, and the modules that brings."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LAYER_DIR = Path(__file__).resolve().parents[2] / "layers" / "core"


def layer_requirements(layer_dir: Path = LAYER_DIR) -> list[Requirement]:
    lines = (layer_dir / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


def distribution_closure(*requirements: Requirement) -> set[str]:
    """The distributions and everything they require, with the extras asked for (from installed metadata)."""
    seen: set[str] = set()
    pending = list(requirements)
    while pending:
        current = pending.pop()
        name = canonicalize_name(current.name)
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            needed = Requirement(line)
            extras = current.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return seen


def distributions_of(top_level: str) -> set[str]:
    """Distributions that install a top-level module or package of this name (or are named so)."""
    owners = importlib.metadata.packages_distributions().get(top_level, [])
    return {canonicalize_name(owner) for owner in owners} or {canonicalize_name(top_level)}


def top_level_modules(distributions: set[str]) -> set[str]:
    """The top-level modules and packages these (installed) distributions provide."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(owner) in distributions for owner in owners)
    }


def makefile_list(variable: str, layer_dir: Path = LAYER_DIR) -> list[str]:
    """A `NAME := a b c` list of layers/core/Makefile."""
    text = (layer_dir / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(rf"^{variable}\s*:=(.*)$", text, re.MULTILINE)
    if not found:
        raise KeyError(f"{variable} is not set in layers/core/Makefile")
    return found.group(1).split()


def site_packages() -> Path:
    """Where this machine's copies of the layer's packages are installed."""
    return Path(str(importlib.metadata.distribution("pydantic").locate_file("")))


def shipped_packages(layer_dir: Path = LAYER_DIR) -> list[str]:
    """The top-level modules and packages of the layer's requirements' closure that the layer ships (less what the
    Lambda runtime provides)."""
    runtime = set(makefile_list("RUNTIME_PROVIDED", layer_dir))
    return sorted(top_level_modules(distribution_closure(*layer_requirements(layer_dir))) - runtime)


def copy_shipped_packages(target: Path, layer_dir: Path = LAYER_DIR, *, bytecode: bool = True) -> list[str]:
    """Copies this machine's installed third-party packages that the layer ships (its requirements' closure, less
    what the Lambda runtime provides) into `target`, sources only, deletes the modules no import reaches (the
    build's `unreachable` step), then runs the build's `bytecode-only` step on them: what the layer's code imports
    on Lambda, for this machine's platform. Returns the top-level names. `bytecode=False` leaves the sources, as
    the layer shipped them until 2026-12-02 (compiled at every import)."""
    site = site_packages()
    shipped = shipped_packages(layer_dir)
    for name in shipped:
        if (site / name).is_dir():
            shutil.copytree(site / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (site / f"{name}.py").is_file():
            shutil.copy(site / f"{name}.py", target)
    _run_build_step(layer_dir, "unreachable", f"DIR={target}", f"GATEWAY={layer_dir / 'sms_gateway'}")
    if bytecode:
        _run_build_step(layer_dir, "bytecode-only", f"DIR={target}")
    return shipped


def _run_build_step(layer_dir: Path, step: str, *variables: str) -> None:
    make = shutil.which("make") or "make"
    # A fixed command of our own build, with paths we made: nothing untrusted reaches it.
    subprocess.run(  # noqa: S603
        [make, "-s", step, *variables, f"PYTHON={sys.executable}"], cwd=layer_dir, check=True, capture_output=True
    )

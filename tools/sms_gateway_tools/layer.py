"""What the CoreLayer is made of: its requirements, their dependency closure, and the modules that brings."""

from __future__ import annotations

import importlib.metadata
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

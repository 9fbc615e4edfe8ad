"""SnapStart: environments resumed from one snapshot draw different retry jitter once the restore hook has run."""

from __future__ import annotations

import random
import sys
import types

import pytest

from sms_gateway import snapstart


def test_environments_restored_from_one_snapshot_draw_different_jitter_after_the_hook() -> None:
    # Given the random state a snapshot holds, restored into two environments
    random.seed(1234)
    snapshot = random.getstate()
    draws = []
    for _ in range(2):
        random.setstate(snapshot)
        # When the runtime runs the after-restore hook, then each environment draws its retry delays
        snapstart.reseed_after_restore()
        draws.append([random.random() for _ in range(4)])
    # Then their jitter differs (without the hook both would draw the same sequence)
    assert draws[0] != draws[1]
    random.setstate(snapshot)
    unhooked = [random.random() for _ in range(4)]
    random.setstate(snapshot)
    assert unhooked == [random.random() for _ in range(4)]


def test_the_hook_is_registered_with_the_runtime_when_it_has_snapshot_restore_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[object] = []
    runtime = types.ModuleType("snapshot_restore_py")
    runtime.register_after_restore = registered.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", runtime)
    assert snapstart.register_restore_hooks() is True
    assert registered == [snapstart.reseed_after_restore]


def test_without_the_runtime_module_nothing_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)
    assert snapstart.register_restore_hooks() is False

"""End to end: a small `sms-gateway chaos` run (faults injected everywhere) keeps every invariant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# A few hundred messages through every fault and retry take minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(540)]


def test_a_small_chaos_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    # Given the local stack with the faults of `make chaos` injected (upstream 5xx and timeouts, duplicated and
    # reordered DLRs, duplicate SQS deliveries, a client webhook failing 30%, dispatchers killed mid-record), and
    # the api's storing and queueing of a send failing (10% per step here, so a run this small has some of each),
    # and scheduled batches cancelled by the client
    summary_path = tmp_path / "chaos.json"
    # When 300 messages go through it (a process of its own: the run owns moto and os.environ while it lasts)
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "sms_gateway_tools.cli",
            "chaos",
            "--messages",
            "300",
            "--seed",
            "7",
            "--time-limit",
            "400",
            # Short, so the run's end does not wait minutes for the last settle checks (some late DLRs lose to them).
            "--dlr-wait",
            "20",
            "--send-failure-rate",
            "0.1",
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    # Then it exits 0, every message was sent, faults of each kind were injected, and no invariant broke
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["messages"] == 300
    assert summary["injected"]["upstream_5xx"] > 0 and summary["injected"]["webhook_500s"] > 0
    assert summary["injected"]["dlrs_duplicated"] > 0 and summary["injected"]["dlrs_reordered"] > 0
    # And every send the api undid (503) was sent again under its Idempotency-Key and taken: none refused in the end
    send_step_failures = summary["injected"]["send_step_failures"]
    assert all(send_step_failures[step] > 0 for step in ("store", "queue", "queue_answer_lost")), send_step_failures
    assert summary["sends_retried"].get("503", 0) > 0
    assert summary["refused_sends"] == []
    assert {verdict["name"]: verdict["violations"] for verdict in summary["invariants"]} == {
        "settled": 0,
        "submitted_once": 0,
        "no_regressions": 0,
        "credits_conserved": 0,
        "every_change_notified": 0,
        "cancels_honoured": 0,
    }
    # And this seed's plan schedules one of its two bulk sends a few seconds ahead, which the client cancels
    assert summary["scheduled_sends"] == 1 and sum(summary["cancels_answered"].values()) == 1
    assert "RESULT: all invariants hold" in finished.stdout

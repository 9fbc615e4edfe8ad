"""End to end: the client commands (`send`, `send --csv`, `status`, `tail`) against a local stack over real HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SENDER = "48974"


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    from sms_gateway_tools.localstack import LocalStack

    with LocalStack(port=0, dlr_delay=0.1) as running:
        yield running


@pytest.fixture(scope="module")
def account(stack: Any) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="CLI", senders=[SENDER], credits=100, api_url=stack.api_url)


def run(*argv: str) -> tuple[int, str, str]:
    """The command as a user runs it, in its own process (the stack's functions print their logs in this one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMS_GATEWAY_")}
    command = [sys.executable, "-m", "sms_gateway_tools.cli", *argv]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=90)
    return done.returncode, done.stdout, done.stderr


def gateway(stack: Any, account: dict[str, Any]) -> list[str]:
    return ["--api-url", stack.api_url, "--token", account["token"]]


def submits(stack: Any) -> int:
    return int(stack.simulator.stats()["submits"])


def credits(account: dict[str, Any]) -> int:
    from sms_gateway_tools.admin import show_account

    return int(show_account(account_id=account["account_id"])["credits"])


def test_send_one_message_then_status_and_tail_see_it_delivered(stack: Any, account: dict[str, Any]) -> None:
    # When one message is sent
    code, out, err = run(
        "send", *gateway(stack, account), "--from", SENDER, "--to", "2348020000000", "--message", "Hi", "--json"
    )
    # Then the answer names its batch and what it cost
    assert code == 0, err
    sent = json.loads(out)
    assert sent["recipients_processed"] == 1
    assert sent["cost"] == 1
    reference_id = sent["reference_id"]

    # And a dry run of one message names its encoding and cost without sending it
    code, out, err = run(
        "send", *gateway(stack, account), "--from", SENDER, "--to", "2348020000000", "--message", "Hi ™", "--dry-run",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    quote = json.loads(out)
    assert (quote["encoding"], quote["ucs2_characters"], quote["total_cost"]) == ("UCS-2", ["™"], 1)

    # And tail follows it until it is delivered, one JSON line per status change
    code, out, err = run(
        "tail", reference_id, *gateway(stack, account), "--json", "--interval", "0.2", "--timeout", "45"
    )
    assert code == 0, err
    changes = [json.loads(line) for line in out.splitlines()]
    assert changes[-1]["status"] == "delivered"
    assert {change["reference_id"] for change in changes} == {reference_id}
    assert len({change["status"] for change in changes}) == len(changes)  # each change printed once

    # And status shows the batch and its message's delivery report
    code, out, err = run("status", reference_id, *gateway(stack, account), "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["batch"]["status"] == "completed"
    assert status["batch"]["cost"] == 1
    assert [(m["to"], m["status"]) for m in status["messages"]] == [("2348020000000", "delivered")]
    code, out, _ = run("status", reference_id, *gateway(stack, account))
    assert code == 0 and "completed" in out and "2348020000000" in out and "delivered" in out


def test_csv_send_reports_each_row_and_a_rerun_sends_nothing_again(
    stack: Any, account: dict[str, Any], tmp_path: Path
) -> None:
    csv_path = tmp_path / "customers.csv"
    csv_path.write_text(
        "name,phone,amount\n"
        "Ada,2348020000011,500\n"
        "Bola,12,700\n"  # an invalid number
        "Chidi,08030000012,\n"  # no amount
        "Dayo,+2348050000013,900\n"
        "Eze,2348090000014,1000\n"
    )
    send_csv = ["send", "--csv", str(csv_path), "--from", SENDER, "--message", "Hi {name}, you owe {amount} naira"]
    submits_before, credits_before = submits(stack), credits(account)

    # Given a dry run first: it quotes the rows and sends, charges and records nothing
    code, out, err = run(*send_csv, *gateway(stack, account), "--dry-run", "--json")
    assert code == 1, err
    quote = json.loads(out)
    assert (quote["dry_run"], quote["accepted"], quote["rejected"], quote["new_cost"]) == (True, 3, 2, 3)
    assert quote["balance"] == credits_before
    assert {r["line"] for r in quote["results"] if r["outcome"] == "rejected"} == {3, 4}
    assert not csv_path.with_name(csv_path.name + ".sent.jsonl").exists()
    assert (submits(stack), credits(account)) == (submits_before, credits_before)

    # When the file is sent
    code, out, err = run(*send_csv, *gateway(stack, account), "--json")
    # Then three rows are accepted and two rejected, each with its reason, and the exit code says so
    assert code == 1, err
    summary = json.loads(out)
    assert (summary["accepted"], summary["rejected"], summary["already_accepted"]) == (3, 2, 0)
    assert summary["cost"] == 3
    reasons = {r["line"]: r["reason"] for r in summary["results"] if r["outcome"] == "rejected"}
    assert set(reasons) == {3, 4}
    assert "'12'" in reasons[3] and "invalid recipient number" in reasons[3]
    assert reasons[4] == "no value for amount (used by the message template)"
    references = {r["line"]: r["reference_id"] for r in summary["results"] if r["outcome"] == "accepted"}
    assert set(references) == {2, 5, 6}
    assert credits(account) == credits_before - 3

    # And the accepted rows are delivered with their own text (tail follows the batches the file recorded)
    code, _, err = run("tail", "--csv", str(csv_path), *gateway(stack, account), "--interval", "0.2", "--timeout", "45")
    assert code == 0, err
    texts = {m["text"] for m in stack.simulator.messages()}
    assert {"Hi Ada, you owe 500 naira", "Hi Dayo, you owe 900 naira", "Hi Eze, you owe 1000 naira"} <= texts
    assert submits(stack) == submits_before + 3

    # When the same command runs again (text output this time)
    code, out, err = run(*send_csv, *gateway(stack, account))
    # Then nothing is sent again: the accepted rows are reported from the progress file, the rejected ones again
    assert code == 1, err
    assert "already accepted (earlier run)  3" in out
    assert "cost: 3 credits" in out
    assert "no value for amount" in out and "invalid recipient number" in out

    # And even without the progress file, the gateway answers each row's first answer under its key
    csv_path.with_name(csv_path.name + ".sent.jsonl").unlink()
    code, out, err = run(*send_csv, *gateway(stack, account), "--json")
    assert code == 1, err
    again = json.loads(out)
    assert {r["line"]: r["reference_id"] for r in again["results"] if r["outcome"] == "accepted"} == references
    time.sleep(1.0)  # room for a (wrong) second dispatch to reach the simulator
    assert submits(stack) == submits_before + 3
    assert credits(account) == credits_before - 3


def test_a_re_export_with_the_numbers_written_another_way_sends_nothing_again_and_says_why(
    stack: Any, account: dict[str, Any], tmp_path: Path
) -> None:
    first, again = tmp_path / "customers.csv", tmp_path / "customers-2.csv"
    first.write_text("to,name\n+234 802-000 0021,Ada\n2348020000022,Bola\n")
    # The CRM's re-export the same day: Ada's number as '00...' (the gateway reads it as the same), Bola's with a '+'
    # (one key, but bare digits cannot be sent as '+': the gateway may read them as the account's national number)
    again.write_text("to,name\n002348020000021,Ada\n+2348020000022,Bola\n")
    send = ["send", "--from", SENDER, "--message", "Hi {name}", *gateway(stack, account)]
    submits_before = submits(stack)
    code, out, err = run(*send, "--csv", str(first), "--json")
    assert code == 0, err
    references = {r["line"]: r["reference_id"] for r in json.loads(out)["results"]}
    credits_before = credits(account)
    # (the two sends reach the simulator after the answer: wait for them, so a wrong third is told from them)
    deadline = time.monotonic() + 60
    while submits(stack) < submits_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    submits_before += 2

    # When the re-export is sent (its own progress file)
    code, out, err = run(*send, "--csv", str(again), "--json")
    # Then Ada's row gets its first answer; Bola's is not sent again and says so, apart from the rejected rows
    assert code == 1, err
    summary = json.loads(out)
    rows = {r["line"]: r for r in summary["results"]}
    assert (rows[2]["outcome"], rows[2]["reference_id"]) == ("accepted", references[2])
    assert rows[3]["outcome"] == "key_used"
    assert "written another way" in rows[3]["reason"]
    assert (summary["rejected"], summary["key_used"]) == (0, 1)
    time.sleep(1.0)  # room for a (wrong) second dispatch to reach the simulator
    assert (submits(stack), credits(account)) == (submits_before, credits_before)
    # And the text summary tells the row apart
    code, out, _ = run(*send, "--csv", str(again))
    assert code == 1
    assert re.search(r"key used with the number written another way +1", out), out
    assert re.search(r"already accepted \(earlier run\) +1", out), out
    assert "rows not sent again: " in out and "+2348020000022" in out


def test_errors_are_clear_and_change_nothing(stack: Any, account: dict[str, Any], tmp_path: Path) -> None:
    # A wrong token: the gateway's refusal, exit 1
    code, _, err = run(
        "send", "--api-url", stack.api_url, "--token", "nope", "--from", SENDER, "--to", "08020000000",
        "--message", "x",
    )  # fmt: skip
    assert code == 1
    assert "invalid credentials (HTTP 401)" in err
    # An unknown batch
    code, _, err = run("status", "123", *gateway(stack, account))
    assert code == 1 and "HTTP 404" in err
    # A CSV without a number column: nothing is sent, exit 2
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("name\nAda\n")
    before = submits(stack)
    code, _, err = run("send", "--csv", str(csv_path), "--from", SENDER, "--message", "Hi", *gateway(stack, account))
    assert code == 2 and "to, msisdn, phone, mobile" in err
    assert submits(stack) == before
    # A CSV with a bad token stops at the first refusal
    csv_path.write_text("to\n08020000001\n08020000002\n")
    code, _, err = run(
        "send", "--csv", str(csv_path), "--from", SENDER, "--message", "Hi", "--api-url", stack.api_url,
        "--token", "nope",
    )  # fmt: skip
    assert code == 2 and "invalid credentials" in err

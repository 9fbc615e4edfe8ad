"""The chaos run's end: it is over only once it stays settled, not at the first look that finds it so."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from sms_gateway_tools.chaos import runner
from sms_gateway_tools.chaos.runner import ChaosOptions, ChaosRun


class SettleCheckExpiringTheLastMessage:
    """The notify queue as the run sees it while a settle check expires the last message: the message is final at
    once, its notification is queued only a moment later (first look: empty), then posted to the client's webhook."""

    def __init__(self, webhook: Any) -> None:
        self.webhook = webhook
        self.looks = 0
        self.notification_posted = False

    def depth(self, stack: Any, queue_id: str) -> int:
        if queue_id in runner.DISPATCH_QUEUES:
            return 0
        self.looks += 1
        if self.looks == 1:
            return 0  # the check wrote the expiry; its notification is not queued yet
        if self.looks == 2:
            return 1  # queued
        if not self.notification_posted:
            self.notification_posted = True
            self.webhook.log.requests += 1
        return 0


def test_the_run_is_not_over_while_the_last_expiry_s_notification_is_still_to_be_queued(monkeypatch):
    monkeypatch.setattr(runner, "SETTLED_GRACE_SECONDS", 0.01)
    monkeypatch.setattr(runner.time, "sleep", lambda seconds: None)
    run = ChaosRun(ChaosOptions(messages=1, time_limit=60), out=io.StringIO())
    webhook = SimpleNamespace(log=SimpleNamespace(requests=0))
    queue = SettleCheckExpiringTheLastMessage(webhook)
    monkeypatch.setattr(run, "_depth", queue.depth)
    monkeypatch.setattr(run, "_unsettled_counts", lambda: (0,))
    monkeypatch.setattr(run, "_settle_checks", lambda stack, queue_id: 0)
    # When the run waits for the end
    settled_at = run._settle(stack=None, webhook=webhook)  # type: ignore[arg-type]
    # Then it saw the notification queued and posted before calling the run over
    assert settled_at is not None
    assert queue.notification_posted and queue.looks >= 4


@pytest.mark.parametrize("requests_meanwhile", [0, 1])
def test_staying_settled_means_empty_queues_and_an_idle_webhook_a_moment_later(monkeypatch, requests_meanwhile):
    monkeypatch.setattr(runner, "SETTLED_GRACE_SECONDS", 0.01)
    run = ChaosRun(ChaosOptions(messages=1, time_limit=60), out=io.StringIO())
    webhook = SimpleNamespace(log=SimpleNamespace(requests=5))

    def sleep(seconds: float) -> None:
        webhook.log.requests += requests_meanwhile

    monkeypatch.setattr(runner.time, "sleep", sleep)
    monkeypatch.setattr(run, "_depth", lambda stack, queue_id: 0)
    assert run._stays_settled(None, webhook) is (requests_meanwhile == 0)  # type: ignore[arg-type]


def test_the_run_prints_its_report_without_the_gateway_s_logs_of_the_faults_it_injects():
    import subprocess
    import sys

    # Given a run whose gateway logs a fault the run injected (as its dispatcher and api log each one)
    script = (
        "from sms_gateway_tools.chaos import runner\n"
        "def run(self):\n"
        "    from sms_gateway.observability import logger\n"
        "    logger.warning('upstream did not take the message')\n"
        "    logger.error('send could not be queued; undoing it')\n"
        "    raise SystemExit(0)\n"
        "runner.ChaosRun.run = run\n"
        "runner.run_chaos(runner.ChaosOptions(messages=1))\n"
    )
    # When it runs in a process of its own (the gateway's modules not yet imported, as under `make chaos`)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    # Then neither log line reaches its output
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "upstream did not take" not in finished.stdout + finished.stderr
    assert "could not be queued" not in finished.stdout + finished.stderr


class LosesTheFirstAnswer:
    """The api as the run's client sees it when the first answer to a send is lost (a read timeout on a busy
    machine): the send is taken; its first repeat under the same Idempotency-Key comes while the first request is
    still under way (409), the next is answered with the same batch."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def post(self, url: str, *, json: Any, headers: dict[str, str]) -> Any:
        import httpx

        self.keys.append(headers["Idempotency-Key"])
        if len(self.keys) == 1:
            raise httpx.ReadTimeout("timed out")
        if len(self.keys) == 2:
            still = '{"message": "a request with this idempotency key is still being processed; retry later"}'
            return SimpleNamespace(status_code=409, text=still)
        return SimpleNamespace(status_code=200, text="", json=lambda: {"reference_id": "900"})


def test_a_send_whose_answer_is_lost_is_sent_again_under_its_idempotency_key(monkeypatch):
    from sms_gateway_tools.chaos.runner import Send

    monkeypatch.setattr(runner.time, "sleep", lambda seconds: None)

    # Given the run's first account, and a send of two messages whose first answer the client never gets
    run = ChaosRun(ChaosOptions(messages=2, time_limit=60), out=io.StringIO())
    run.accounts = [{"account_id": "7", "token": "token-of-7", "senders": ["48970"]}]
    api = LosesTheFirstAnswer()
    send = Send(account=0, recipients=("2348030000001", "2348020000002"), text="Hi", delivery_report=False)
    # When the run sends it
    run._send_wave(api, SimpleNamespace(api_url="http://127.0.0.1:9"), [send])  # type: ignore[arg-type]
    # Then it sent it again under the same key, as a client does, and counts its messages accepted
    # (again after the 409 that said the first was still under way)
    assert api.keys == ["chaos-2348030000001"] * 3
    assert (run.progress.accepted_messages, run.progress.references) == (2, [("7", 900)])
    assert run.progress.sends_retried == {"ReadTimeout": 1, "409 still being processed": 1}
    assert run.progress.refused_sends == []


class LosesTheFirstCancelAnswer:
    """The api as the run's client sees it when the first answer to a cancel is lost: the cancel is done; its first
    repeat under the same Idempotency-Key comes while the first request is still under way (409), the next is
    answered with the first request's answer, the credits that cancel gave back."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []

    def __enter__(self) -> LosesTheFirstCancelAnswer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def delete(self, url: str, *, headers: dict[str, str]) -> Any:
        import httpx

        self.keys.append(headers.get("Idempotency-Key"))
        if len(self.keys) == 1:
            raise httpx.ReadTimeout("timed out")
        if len(self.keys) == 2:
            still = '{"message": "a request with this idempotency key is still being processed; retry later"}'
            return SimpleNamespace(status_code=409, text=still, json=lambda: {"message": still})
        answer = {"status_code": 200, "status": "cancelled", "refunded_credits": 5, "balance": 100}
        return SimpleNamespace(status_code=200, text="", json=lambda: answer)


def test_a_cancel_whose_answer_is_lost_is_sent_again_under_one_idempotency_key_and_learns_its_refund(monkeypatch):
    monkeypatch.setattr(runner.time, "sleep", lambda seconds: None)
    api = LosesTheFirstCancelAnswer()
    monkeypatch.setattr(runner.httpx, "Client", lambda **options: api)
    # Given the run's first account, and its cancel of batch 900 whose first answer it never gets
    run = ChaosRun(ChaosOptions(messages=2, time_limit=60), out=io.StringIO())
    account = {"account_id": "7", "token": "token-of-7", "senders": ["48970"]}
    # When the run cancels it
    run._cancel(SimpleNamespace(api_url="http://127.0.0.1:9"), account, "900")
    # Then it sent the cancel again under the key of its first attempt, waited out the 409 that said the first was
    # still under way, and keeps the answer with the refund it names
    assert len(api.keys) == 3 and api.keys[0] is not None and set(api.keys) == {api.keys[0]}
    assert run.progress.cancels == {"900": 200}
    assert run.progress.cancel_refunds == {"900": 5}
    assert run.progress.cancels_retried == {"ReadTimeout": 1, "409 still being processed": 1}

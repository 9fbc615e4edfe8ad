"""Benchmark: AWS requests and time per view of the portal's Messages page (and a search by number) as an account's
history grows. The page reads a bounded window (logic/history.py), so its requests must stop growing once the
history passes the bound: the target is that 4x the batches beyond the bound costs no more requests."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import median, metering_boto3_clients, offline_aws_environment, patched_environ

NAME = "portal_pages"
MESSAGES_PER_BATCH = 10
REPEATS = 3


def _seed(store: Any, account_id: str, batches: int, *, now: datetime) -> None:
    """`batches` sends of the last six days, each to MESSAGES_PER_BATCH numbers, one failed and the rest delivered."""
    from sms_gateway.domain.status import MessageStatus
    from tests.integration.test_portal_history import add_batch

    step = timedelta(days=6) / max(batches, 1)
    for index in range(batches):
        outcomes = {
            f"+234803{index % 1000:03d}{n:04d}": MessageStatus.FAILED if n == 0 else MessageStatus.DELIVERED
            for n in range(MESSAGES_PER_BATCH)
        }
        add_batch(store, account_id, now - timedelta(days=6) + index * step, outcomes, price=1)


def _measure(batches: int) -> dict[str, Any]:
    from moto import mock_aws

    from sms_gateway import bootstrap
    from sms_gateway_tools.admin import create_account
    from sms_gateway_tools.localstack.resources import create_resources
    from tests.conftest import FakeContext, load_function
    from tests.portal_client import PortalClient

    with patched_environ(offline_aws_environment()), mock_aws():
        env = create_resources(
            stack_name="bench-portal", simulator_url="http://127.0.0.1:9", api_url="http://127.0.0.1:8"
        )
        with patched_environ(env):
            bootstrap.reset()
            account = create_account(name="Bench", senders=["48974"], credits=100_000)
            _seed(bootstrap.gateway().store, account["account_id"], batches, now=datetime.now(UTC))
            module = load_function("api")
            client = PortalClient(lambda event: module.handler(event, FakeContext()))
            client.sign_in(account["username"], account["password"])
            row: dict[str, Any] = {"batches": batches, "messages": batches * MESSAGES_PER_BATCH}
            for label, path in (("page", "/portal/messages"), ("search", "/portal/messages?number=08030000001")):
                requests, seconds = [], []
                for _ in range(REPEATS):
                    bootstrap.reset()
                    with metering_boto3_clients() as meter:
                        started = time.perf_counter()
                        answer = client.get(path)
                        seconds.append(time.perf_counter() - started)
                    assert answer.status == 200, answer.text()[:300]
                    requests.append(meter.total)
                row[f"{label}_requests"] = int(median(requests))
                row[f"{label}_ms_moto"] = round(median(seconds) * 1000)
            bootstrap.reset()
            return row


def run(quick: bool) -> dict[str, Any]:
    from sms_gateway.logic import history

    bound = history.MAX_WINDOW_BATCHES
    volumes = (bound // 2, bound + 20, 4 * (bound + 20)) if not quick else (bound // 2, bound + 20, 2 * (bound + 20))
    rows = [_measure(batches) for batches in volumes]
    beyond, far_beyond = rows[1], rows[2]
    met = (
        far_beyond["page_requests"] <= beyond["page_requests"]
        and far_beyond["search_requests"] <= beyond["search_requests"]
    )
    return {
        "name": NAME,
        "title": "Portal Messages page: requests per view as the history grows",
        "command": ".venv/bin/python -m bench --only portal_pages",
        "target": f"requests per view flat beyond the window ({bound} batches, {history.MAX_WINDOW_MESSAGES} messages)",
        "met": met,
        "rows": rows,
        "notes": [
            f"{MESSAGES_PER_BATCH} messages per batch over the last 6 days; each view is a signed-in GET through the "
            "real api handler on moto (session read included); medians of "
            f"{REPEATS} views. Times are moto's on this machine, not DynamoDB's.",
            "The page reads one Query for the batches made in the window, one for the scheduled batches going out in "
            "it (and one BatchGetItem for those made before it: none here), and one per batch for its messages (up to "
            "the bound, 8 at a time); the listed batches' counts reuse those reads. A search by number reads its own "
            "window too.",
        ],
    }

"""The upstream simulator (fake SMSC): submits, duplicates, signed DLRs and inbound SMS."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sms_gateway_tools.simulator import UpstreamSimulator, sign, verify

SECRET = "s3cr3t"


class Receiver:
    """A small HTTP server that records every POST and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.put({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.requests.get(timeout=timeout)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()
    found.thread.join(5)


@pytest.fixture
def simulator(receiver: Receiver) -> Iterator[UpstreamSimulator]:
    with UpstreamSimulator(SECRET, inbound_url=f"{receiver.url}/callbacks/simulator/inbound", dlr_delay=0.05) as sim:
        yield sim


def submit(sim: UpstreamSimulator, secret: str = SECRET, **fields: Any) -> httpx.Response:
    body = {"client_ref": "m-1", "from": "48974", "to": "2348020000000", "text": "hello", "dlr_url": None}
    body.update(fields)
    return httpx.post(f"{sim.url}/sms/send", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=5)


def stats(sim: UpstreamSimulator) -> dict[str, int]:
    return dict(httpx.get(f"{sim.url}/stats", timeout=5).json())


def test_submit_answers_a_message_id(simulator: UpstreamSimulator) -> None:
    # Given a running simulator
    # When a message is submitted with the right bearer secret
    response = submit(simulator)

    # Then it is accepted with a simulator message id and listed
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "accepted"
    assert answer["message_id"].startswith("sim-")
    messages = httpx.get(f"{simulator.url}/messages", timeout=5).json()
    assert [m["client_ref"] for m in messages] == ["m-1"]
    assert messages[0]["to"] == "2348020000000"


def test_duplicate_client_ref_is_counted_once(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # Given a message that was submitted with a DLR URL
    dlr_url = f"{receiver.url}/callbacks/simulator/dlr"
    first = submit(simulator, client_ref="dup-1", dlr_url=dlr_url).json()
    receiver.next()

    # When the same client_ref is submitted again
    second = submit(simulator, client_ref="dup-1", dlr_url=dlr_url).json()

    # Then it answers the same message id, counts a duplicate and sends no second DLR
    assert second["message_id"] == first["message_id"]
    counted = stats(simulator)
    assert (counted["submits"], counted["unique"], counted["duplicates"]) == (2, 1, 1)
    time.sleep(0.3)
    assert receiver.requests.empty()
    assert stats(simulator)["dlrs_sent"] == 1


def test_dlr_is_posted_with_a_valid_signature(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # Given a submit with a DLR URL
    message_id = submit(simulator, client_ref="dlr-1", dlr_url=f"{receiver.url}/callbacks/simulator/dlr").json()[
        "message_id"
    ]

    # When the DLR delay has passed
    request = receiver.next()

    # Then a DELIVRD report arrives, signed with the shared secret over "<timestamp>.<raw body>"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"] == "/callbacks/simulator/dlr"
    timestamp = headers["x-simulator-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert headers["x-simulator-signature"] == sign(SECRET, timestamp, request["body"])
    assert verify(SECRET, timestamp, request["body"].decode(), headers["x-simulator-signature"])
    assert not verify("other", timestamp, request["body"], headers["x-simulator-signature"])
    # A signature in characters other than ASCII is a wrong one, not a TypeError
    assert not verify(SECRET, timestamp, request["body"], "\u00e9" * 64)
    report = json.loads(request["body"])
    assert report["message_id"] == message_id
    assert report["client_ref"] == "dlr-1"
    assert report["to"] == "2348020000000"
    assert (report["status"], report["error_code"]) == ("DELIVRD", "000")
    assert report["submitted_at"].endswith("Z") and report["done_at"].endswith("Z")


def test_failure_rate_one_reports_undeliverable(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # Given a simulator told at run time that every message fails
    answer = httpx.post(f"{simulator.url}/control/settings", json={"failure_rate": 1}, timeout=5)
    assert answer.json()["failure_rate"] == 1.0

    # When a message is submitted
    submit(simulator, client_ref="fail-1", dlr_url=f"{receiver.url}/dlr")

    # Then its DLR says UNDELIV with error code 001
    report = json.loads(receiver.next()["body"])
    assert (report["status"], report["error_code"]) == ("UNDELIV", "001")


def test_dlr_is_retried_when_the_receiver_fails(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # Given a receiver that answers 503 at first
    receiver.status = 503
    submit(simulator, client_ref="retry-1", dlr_url=f"{receiver.url}/dlr")
    receiver.next()

    # When it recovers
    receiver.status = 200

    # Then the DLR is delivered by a later attempt
    second = json.loads(receiver.next()["body"])
    assert second["client_ref"] == "retry-1"
    deadline = time.monotonic() + 5
    while stats(simulator)["dlrs_sent"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(simulator)["dlrs_sent"] == 1


def test_bad_bearer_is_rejected(simulator: UpstreamSimulator) -> None:
    # When a submit carries the wrong secret, or none
    wrong = submit(simulator, secret="nope")
    missing = httpx.post(f"{simulator.url}/sms/send", json={"to": "234", "text": "x"}, timeout=5)

    # Then both are 401 and nothing is recorded
    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert stats(simulator)["submits"] == 0


def test_error_rate_one_answers_500(simulator: UpstreamSimulator) -> None:
    # Given fault injection on every submit
    simulator.configure(error_rate=1)

    # When a message is submitted, Then the simulator answers 500 and keeps nothing
    assert submit(simulator).status_code == 500
    assert stats(simulator)["unique"] == 0


def test_inbound_control_posts_to_the_inbound_url(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # When the control endpoint is asked for an inbound SMS
    answer = httpx.post(
        f"{simulator.url}/control/inbound",
        json={"from": "2348020000000", "to": "48974", "message": "STOP"},
        timeout=5,
    ).json()

    # Then the simulator posted it, signed, to the inbound URL and reports the callback status
    request = receiver.next()
    assert request["path"] == "/callbacks/simulator/inbound"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["x-simulator-signature"] == sign(SECRET, headers["x-simulator-timestamp"], request["body"])
    inbound = json.loads(request["body"])
    assert inbound["from"] == "2348020000000"
    assert inbound["to"] == "48974"
    assert inbound["text"] == "STOP"
    assert answer == {"message_id": inbound["message_id"], "delivered": True, "status": 200}
    assert stats(simulator)["inbound_sent"] == 1


def test_stop_ends_every_thread() -> None:
    # Given a simulator that has a DLR still pending
    before = set(threading.enumerate())
    sim = UpstreamSimulator(SECRET, dlr_delay=30).start()
    port = sim.port
    submit(sim, dlr_url="http://127.0.0.1:9/dlr")

    # When it is stopped
    sim.stop()

    # Then its threads are gone and its port is closed
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/stats", timeout=2)


def test_an_injected_timeout_accepts_the_message_but_answers_too_late(simulator: UpstreamSimulator) -> None:
    # Given a simulator that holds every accepted submit's answer for 2 s
    simulator.configure(timeout_rate=1, timeout_delay=2)
    # When a sender with a 0.5 s read timeout submits, gives up, and submits the same reference again promptly
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{simulator.url}/sms/send",
            json={"client_ref": "t-1", "to": "2348020000000", "text": "hello"},
            headers={"Authorization": f"Bearer {SECRET}"},
            timeout=0.5,
        )
    simulator.configure(timeout_rate=0)
    again = submit(simulator, client_ref="t-1")
    third = submit(simulator, client_ref="t-1")
    # Then one message exists; the retry after the timeout and the repeat after an in-time answer are told apart
    assert again.json()["duplicate"] is True and third.json()["duplicate"] is True
    counted = stats(simulator)
    assert (counted["unique"], counted["timeouts_injected"]) == (1, 1)
    assert (counted["resubmits_after_timeout"], counted["resubmits_after_accept"]) == (1, 1)


def test_duplicated_and_reordered_dlrs(simulator: UpstreamSimulator, receiver: Receiver) -> None:
    # Given a simulator that duplicates and reorders every DLR
    simulator.configure(dlr_duplicate_rate=1, dlr_reorder_rate=1)
    # When a message is submitted
    submit(simulator, client_ref="d-1", dlr_url=f"{receiver.url}/dlr")
    # Then its final report comes first, then (later) the same report again and an older intermediate one
    reports = [json.loads(receiver.next()["body"]) for _ in range(3)]
    assert reports[0]["status"] == "DELIVRD"
    assert sorted(report["status"] for report in reports[1:]) == ["DELIVRD", "ENROUTE"]
    assert {report["client_ref"] for report in reports} == {"d-1"}
    counted = stats(simulator)
    assert (counted["dlrs_duplicated"], counted["dlrs_reordered"]) == (1, 1)
    # And the message counts as reported once
    assert simulator.messages()[0]["dlr_delivered"] is True


def _documented_protocol() -> tuple[set[str], set[str], set[str]]:
    """docs/local-stack.md's simulator protocol: the fields of its DLR body, of its inbound SMS body and of a
    `GET /messages` entry, as a developer writing a receiver or a script against the simulator reads them."""
    import re

    from tests.conftest import REPO

    doc = (REPO / "docs" / "local-stack.md").read_text()
    protocol = doc.split("## The upstream simulator protocol", 1)[1]

    def fields_of_block(section: str, after: str) -> set[str]:
        """The JSON field names in the first code block after `after` in `section`."""
        block = protocol.split(section, 1)[1].split(after, 1)[1].split("```", 2)[1]
        return set(re.findall(r'"([a-z_]+)":', block))

    dlr = fields_of_block("### Delivery report (simulator -> gateway)", "seconds after a unique submit")
    inbound = fields_of_block("### Inbound SMS (simulator -> gateway)", "makes the simulator POST")
    row = next(line for line in protocol.splitlines() if line.startswith("| `GET /messages` |"))
    listed = row.split("`")[3]
    return dlr, inbound, {name.strip() for name in listed.split(",")}


def test_review_the_protocol_docs_local_stack_md_shows_names_every_field_the_simulator_sends(
    simulator: UpstreamSimulator, receiver: Receiver
) -> None:
    # Given the simulator's protocol as docs/local-stack.md writes it
    dlr_fields, inbound_fields, message_fields = _documented_protocol()
    # When a message is submitted, reported and listed, and an inbound SMS is sent
    submit(simulator, client_ref="doc-1", dlr_url=f"{receiver.url}/callbacks/simulator/dlr")
    report = json.loads(receiver.next()["body"])
    httpx.post(
        f"{simulator.url}/control/inbound", json={"from": "2348020000000", "to": "48974", "message": "Hi"}, timeout=5
    )
    inbound = json.loads(receiver.next()["body"])
    listed = httpx.get(f"{simulator.url}/messages", timeout=5).json()[0]
    # Then the documented fields are the ones it sends, no more and no fewer
    assert dlr_fields == set(report)
    assert inbound_fields == set(inbound)
    assert message_fields == set(listed)

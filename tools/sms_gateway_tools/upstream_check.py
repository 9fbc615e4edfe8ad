"""What the real-upstream checks share (kannel_check.py, jasmin_check.py): a recorder standing in for our webhook,
the SMSC's plan by scenario, and the run of every scenario and MO through an adapter, printed and recorded.

Each scenario submits through the adapter's own `submit` (its DLR URL on the recorder), waits until no callback came
for a while, and records the `submit_sm` PDUs the SMSC got and every request the upstream made, with what the adapter
parses of it; then the SMSC delivers each MO SMS and the MO posts are recorded the same way.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from sms_gateway.adapters.providers.jasmin import JasminProvider
from sms_gateway.adapters.providers.kannel import KannelProvider
from sms_gateway.domain.models import CallbackRequest, SubmitRequest
from sms_gateway.errors import CallbackRejected, UpstreamError
from sms_gateway_tools.smpp_smsc import ESM_CLASS_UDHI, Outcome, Receipt, SmppSmsc, Submitted

SENDER, HANDSET = "48974", "+2348020000000"
# An MO SMS the SMSC delivers: (name, data_coding, user data header, short message).
MoSms = tuple[str, int, bytes, bytes]
CheckedAdapter = KannelProvider | JasminProvider


@dataclass(frozen=True)
class Scenario:
    """A message submitted through the adapter, and what the SMSC does with each part (by part number, from 1)."""

    name: str
    text: str
    outcomes: Callable[[int], Outcome]


# The receipts of a message of one part both checks run: the SMSC's stat words as an operator's SMSC sends them.
ONE_PART_RECEIPTS = (
    Scenario(
        "one part, en route then delivered",
        "Hello there",
        lambda _: Outcome(receipts=(Receipt("ENROUTE"), Receipt("DELIVRD"))),
    ),
    Scenario("one part, undelivered", "Hello there", lambda _: Outcome(receipts=(Receipt("UNDELIV", "001"),))),
    Scenario("one part, expired", "Hello there", lambda _: Outcome(receipts=(Receipt("EXPIRED", "002"),))),
    Scenario("one part, accepted (ACCEPTD)", "Hello there", lambda _: Outcome(receipts=(Receipt("ACCEPTD"),))),
)

# MO SMS the SMSC delivers: (name, data_coding, user data header, short message).
MO_SMS: tuple[MoSms, ...] = (
    ("GSM", 0, b"", b"Hello from the phone"),
    ("UCS-2", 8, b"", "Hé ™ я😀".encode("utf-16-be")),
    ("Latin-1", 3, b"", "Grüße".encode("latin-1")),
    ("UCS-2 in 2 concatenated parts, part 1", 8, bytes.fromhex("050003770201"), ("я" * 67).encode("utf-16-be")),
    ("UCS-2 in 2 concatenated parts, part 2", 8, bytes.fromhex("050003770202"), "end😀".encode("utf-16-be")),
)


class Recorder:
    """Stands in for the webhook: records every request and answers 200, with `ack` as the body (Jasmin's)."""

    def __init__(self, ack: bytes = b"") -> None:
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", str(len(ack)))
                self.end_headers()
                self.wfile.write(ack)

            do_GET = do_POST = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def next(self, timeout: float) -> dict[str, Any]:
        return self.requests.get(timeout=timeout)

    def drain(self, quiet: float) -> list[dict[str, Any]]:
        """Every request until none came for `quiet` seconds."""
        got: list[dict[str, Any]] = []
        with suppress(queue.Empty):
            while True:
                got.append(self.requests.get(timeout=quiet))
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def callback_request(recorded: dict[str, Any]) -> CallbackRequest:
    """A recorded request as the webhook hands it to the adapter."""
    parts = urlsplit(recorded["path"])
    return CallbackRequest(
        method=recorded["method"],
        url=f"https://gw.example.com{parts.path}",
        headers={key.lower(): value for key, value in recorded["headers"].items()},
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        body=recorded["body"].decode("utf-8", errors="replace"),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, httpx.HTTPError):
            if check():
                return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def stop(processes: list[subprocess.Popen[Any]]) -> None:
    """Ends the processes started, the last one first: SIGTERM (its stdin closed), then SIGKILL after 10 s."""
    for process in reversed(processes):
        if process.stdin:
            with suppress(OSError):
                process.stdin.close()
        process.terminate()
    for process in reversed(processes):
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class ScenarioPlan:
    """The SMSC's plan: what the current scenario does with each `submit_sm`, by its part number (the last octet of
    the concatenation header of a part the upstream cut, 1 for a message of one part)."""

    def __init__(self, first: Scenario) -> None:
        self.current = first

    def __call__(self, submitted: Submitted) -> Outcome:
        part = submitted.udh[-1] if submitted.esm_class & ESM_CLASS_UDHI else 1
        return self.current.outcomes(part)


@contextmanager
def smsc_and_recorder(plan: ScenarioPlan, ack: bytes = b"") -> Iterator[tuple[SmppSmsc, Recorder]]:
    """The SMSC of smpp_smsc.py following `plan`, and the recorder (answering `ack`), both stopped afterwards."""
    recorder = Recorder(ack=ack)
    smsc = SmppSmsc(plan=plan).start()
    try:
        yield smsc, recorder
    finally:
        smsc.stop()
        recorder.close()


def write_capture(capture: Path | None, record: dict[str, Any]) -> None:
    if capture:
        capture.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"\nwrote {capture}")


def captured(capture: Path, scenario: str | None = None) -> list[dict[str, Any]]:
    """The requests a capture recorded for one of its scenarios (its DLRs), or, without one, its MO posts."""
    record = json.loads(capture.read_text())
    if scenario is None:
        return list(record["mo"])
    [found] = [s for s in record["scenarios"] if s["name"] == scenario]
    return list(found["callbacks"])


def exercise(
    adapter: CheckedAdapter,
    smsc: SmppSmsc,
    recorder: Recorder,
    *,
    plan: ScenarioPlan,
    scenarios: tuple[Scenario, ...],
    mo_sms: tuple[MoSms, ...],
    ref_prefix: str,
    quiet: float,
) -> dict[str, list[dict[str, Any]]]:
    """Runs each scenario and MO SMS through `adapter` and the upstream between it and `smsc`: the record of them."""
    record: dict[str, list[dict[str, Any]]] = {"scenarios": [], "mo": []}
    for number, scenario in enumerate(scenarios, start=1):
        plan.current = scenario
        before = len(smsc.submitted)
        ref = f"{ref_prefix}.{number}"
        request = SubmitRequest(
            client_ref=ref,
            sender=SENDER,
            msisdn=HANDSET,
            text=scenario.text,
            dlr_url=f"{recorder.url}/callbacks/{adapter.name}/dlr",
        )
        answer = asyncio.run(_submit(adapter, request))
        callbacks = recorder.drain(quiet=quiet)
        pdus = smsc.submitted[before:]
        print(f"\n== {scenario.name} (ref {ref}): {answer}, {len(pdus)} submit_sm")
        for pdu in pdus:
            print(
                f"   submit_sm udh={pdu.udh.hex() or '-'} data_coding={pdu.data_coding} "
                f"registered_delivery={pdu.registered_delivery} -> id {pdu.message_id}"
                f"{f' refused 0x{pdu.command_status:08x}' if pdu.command_status else ''}"
            )
        for recorded in callbacks:
            _show(recorded, _parsed(adapter, recorded, inbound=False))
        record["scenarios"].append(
            {
                "name": scenario.name,
                "ref": ref,
                "text": scenario.text,
                "send": answer,
                "submit_sm": [
                    {
                        "udh": pdu.udh.hex(),
                        "data_coding": pdu.data_coding,
                        "registered_delivery": pdu.registered_delivery,
                        "message_id": pdu.message_id,
                        "command_status": pdu.command_status,
                    }
                    for pdu in pdus
                ],
                "callbacks": [_as_json(recorded) for recorded in callbacks],
            }
        )
    print("\n== MO")
    for name, coding, udh, payload in mo_sms:
        smsc.deliver(
            source=HANDSET.lstrip("+"),
            destination=SENDER,
            short_message=udh + payload,
            data_coding=coding,
            esm_class=ESM_CLASS_UDHI if udh else 0,
        )
        print(f"   deliver_sm {name}")
    for recorded in recorder.drain(quiet=quiet):
        _show(recorded, _parsed(adapter, recorded, inbound=True))
        record["mo"].append(_as_json(recorded))
    return record


def _parsed(adapter: CheckedAdapter, recorded: dict[str, Any], *, inbound: bool) -> str:
    request = callback_request(recorded)
    if not adapter.verify_callback(request):
        return "REFUSED: token"
    try:
        if inbound:
            sms = adapter.parse_inbound(request)
            return f"MO from {sms.msisdn} to {sms.to}: {sms.text!r}"
        return "; ".join(
            f"{r.status.value} part={r.part} error_code={r.error_code}" for r in adapter.parse_delivery_reports(request)
        )
    except CallbackRejected as rejected:
        return f"REJECTED: {rejected}"


def _show(recorded: dict[str, Any], parsed: str) -> None:
    print(f"   {recorded['method']} {recorded['path']}\n      -> {parsed}")


async def _submit(adapter: CheckedAdapter, request: SubmitRequest) -> str:
    """What the upstream answered the adapter's submit."""
    async with httpx.AsyncClient(timeout=10) as client:
        adapter._client = client
        try:
            result = await adapter.submit(request)
        except UpstreamError as error:
            return f"refused: {error}"
    return f"taken as {result.upstream_message_id}"


def _as_json(recorded: dict[str, Any]) -> dict[str, Any]:
    return {**recorded, "body": recorded["body"].decode("utf-8", errors="backslashreplace")}

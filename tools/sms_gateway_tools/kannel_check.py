"""Run the Kannel adapter against a real Kannel (bearerbox + smsbox) over SMPP, and record what Kannel sends back.

    PYTHONPATH=layers/core:tools .venv/bin/python -m sms_gateway_tools.kannel_check [--capture FILE]

Needs Debian's `kannel` package (`bearerbox`, `smsbox` on the PATH); exits 2 when they are absent. Everything runs
on free 127.0.0.1 ports in a temporary directory: a recorder standing in for our webhook, the SMSC of
`smpp_smsc.py` (the SMPP receipts an operator's SMSC sends), and Kannel between them, configured as
docs/providers-smsc.md says. Each scenario submits through `KannelProvider.submit` (the sendsms it builds, dlr-url and
dlr-mask included), then prints every DLR and MO request Kannel made and what the adapter parses of it. `--capture`
writes them as JSON: tests/fixtures/kannel-1.4.5-smpp.json was written so, and the tests replay it without Kannel.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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

from sms_gateway.adapters.providers.kannel import KannelProvider
from sms_gateway.domain.models import CallbackRequest, SubmitRequest
from sms_gateway.errors import CallbackRejected
from sms_gateway_tools.smpp_smsc import ESM_CLASS_UDHI, Outcome, Receipt, SmppSmsc, Submitted

TOKEN = "kannel-check-token-0123456789abcdef"  # noqa: S105 (the throwaway Kannel this check starts)
SENDER, HANDSET = "48974", "+2348020000000"

KANNEL_CONF = """\
group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = check
smsbox-port = {smsbox}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-file = "{dir}/bearerbox.log"
dlr-storage = internal

{smsc_group}

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-file = "{dir}/smsbox.log"
mo-recode = true

group = sendsms-user
username = gw
password = secret
max-messages = 10
concatenation = true

group = sms-service
keyword = default
catch-all = true
max-messages = 0
send-sender = true
post-url = "{webhook}/callbacks/kannel/inbound?token={token}&from=%p&to=%P&ts=%T&id=%I&coding=%c&charset=%C&text_hex=%e"
"""


# Kannel's SMPP client, bound to the SMSC of smpp_smsc.py.
SMPP_SMSC_GROUP = """\
group = smsc
smsc = smpp
smsc-id = smpp
host = 127.0.0.1
port = {port}
transceiver-mode = true
smsc-username = gw
smsc-password = pw
system-type = ""
"""


@dataclass(frozen=True)
class Scenario:
    """A message submitted through the adapter, and what the SMSC does with each part (by part number, from 1)."""

    name: str
    text: str
    outcomes: Callable[[int], Outcome]


SCENARIOS = (
    Scenario(
        "one part, en route then delivered",
        "Hello there",
        lambda _: Outcome(receipts=(Receipt("ENROUTE"), Receipt("DELIVRD"))),
    ),
    Scenario("one part, undelivered", "Hello there", lambda _: Outcome(receipts=(Receipt("UNDELIV", "001"),))),
    Scenario("one part, expired", "Hello there", lambda _: Outcome(receipts=(Receipt("EXPIRED", "002"),))),
    Scenario("one part, accepted (ACCEPTD)", "Hello there", lambda _: Outcome(receipts=(Receipt("ACCEPTD"),))),
    Scenario("one part, refused by the SMSC", "Hello there", lambda _: Outcome(command_status=0x0B)),
    Scenario("3 GSM parts, each delivered", "a" * 152 + "€" + "b" * 152, lambda _: Outcome()),
    Scenario(
        "3 GSM parts, part 1 undelivered",
        "a" * 152 + "€" + "b" * 152,
        lambda part: Outcome(receipts=(Receipt("UNDELIV", "001") if part == 1 else Receipt("DELIVRD"),)),
    ),
    Scenario(
        "3 GSM parts, part 2 undelivered",
        "a" * 152 + "€" + "b" * 152,
        lambda part: Outcome(receipts=(Receipt("UNDELIV", "001") if part == 2 else Receipt("DELIVRD"),)),
    ),
    Scenario(
        "3 UCS-2 parts, emoji on the boundary, part 2 refused by the SMSC",
        "я" * 66 + "😀" + "я" * 66,
        lambda part: Outcome(command_status=0x0B) if part == 2 else Outcome(),
    ),
)

# MO SMS the SMSC delivers: (name, data_coding, user data header, short message).
MO_SMS = (
    ("GSM", 0, b"", b"Hello from the phone"),
    ("UCS-2", 8, b"", "Hé ™ я😀".encode("utf-16-be")),
    ("Latin-1", 3, b"", "Grüße".encode("latin-1")),
    ("UCS-2 in 2 concatenated parts, part 1", 8, bytes.fromhex("050003770201"), ("я" * 67).encode("utf-16-be")),
    ("UCS-2 in 2 concatenated parts, part 2", 8, bytes.fromhex("050003770202"), "end😀".encode("utf-16-be")),
)


class Recorder:
    """Stands in for the webhook: records every request and answers 200."""

    def __init__(self) -> None:
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

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


def _wait(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, httpx.HTTPError):
            if check():
                return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


@contextmanager
def running_kannel(directory: Path, smsc: SmppSmsc, webhook: str) -> Iterator[tuple[str, str]]:
    """bearerbox and smsbox bound to 127.0.0.1, connected to `smsc`: yields smsbox's URL and Kannel's version."""
    ports = {name: free_port() for name in ("admin", "smsbox", "sendsms")}
    conf = directory / "kannel.conf"
    smsc_group = SMPP_SMSC_GROUP.format(port=smsc.port)
    conf.write_text(KANNEL_CONF.format(dir=directory, smsc_group=smsc_group, webhook=webhook, token=TOKEN, **ports))
    started: list[subprocess.Popen[bytes]] = []
    try:
        for box, port in (("bearerbox", ports["admin"]), ("smsbox", ports["sendsms"])):
            with (directory / f"{box}.out").open("wb") as log:
                process = subprocess.Popen([box, "-v", "1", str(conf)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
                started.append(process)
            _wait(functools.partial(_listening, port), box)
        status = f"http://127.0.0.1:{ports['admin']}/status.txt?password=check"
        _wait(lambda: smsc.bound and "online" in httpx.get(status, timeout=2).text, "the SMPP bind")
        about = subprocess.run(["bearerbox", "--version"], capture_output=True, text=True, check=False)  # noqa: S607
        version = re.search(r"version `([^']+)'", about.stdout)
        yield f"http://127.0.0.1:{ports['sendsms']}", version.group(1) if version else "unknown"
    finally:
        stop(started)


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


def _parsed(adapter: KannelProvider, recorded: dict[str, Any], *, inbound: bool) -> str:
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


def run(capture: Path | None) -> int:
    if not (shutil.which("bearerbox") and shutil.which("smsbox")):
        print("Kannel is not installed (bearerbox, smsbox): apt-get install kannel", file=sys.stderr)
        return 2

    def plan(submitted: Submitted) -> Outcome:
        # Each part of a message Kannel cut carries its concatenation header: its part number is the last octet
        part = submitted.udh[-1] if submitted.esm_class & ESM_CLASS_UDHI else 1
        return current[0].outcomes(part)

    current: list[Scenario] = [SCENARIOS[0]]
    recorder = Recorder()
    smsc = SmppSmsc(plan=plan).start()
    record: dict[str, Any] = {
        "kannel": "unknown",
        "smsc": "smpp (tools/sms_gateway_tools/smpp_smsc.py)",
        "scenarios": [],
        "mo": [],
    }
    try:
        with (
            tempfile.TemporaryDirectory(prefix="kannel-check-") as tmp,
            running_kannel(Path(tmp), smsc, recorder.url) as (smsbox_url, version),
        ):
            record["kannel"] = version
            adapter = KannelProvider(
                name="kannel",
                url=smsbox_url,
                username="gw",
                password="secret",  # noqa: S106 (the sendsms-user of KANNEL_CONF)
                callback_token=TOKEN,
                max_parts=10,
            )
            print(f"Kannel {version}, SMPP SMSC on 127.0.0.1:{smsc.port}")
            for number, scenario in enumerate(SCENARIOS, start=1):
                current[0] = scenario
                before = len(smsc.submitted)
                ref = f"7.{number}"
                request = SubmitRequest(
                    client_ref=ref,
                    sender=SENDER,
                    msisdn=HANDSET,
                    text=scenario.text,
                    dlr_url=f"{recorder.url}/callbacks/kannel/dlr",
                )
                asyncio.run(_submit(adapter, request))
                callbacks = recorder.drain(quiet=2.0)
                pdus = smsc.submitted[before:]
                print(f"\n== {scenario.name} (ref {ref}): {len(pdus)} submit_sm")
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
            for name, coding, udh, payload in MO_SMS:
                smsc.deliver(
                    source=HANDSET.lstrip("+"),
                    destination=SENDER,
                    short_message=udh + payload,
                    data_coding=coding,
                    esm_class=ESM_CLASS_UDHI if udh else 0,
                )
                print(f"   deliver_sm {name}")
            for recorded in recorder.drain(quiet=2.0):
                _show(recorded, _parsed(adapter, recorded, inbound=True))
                record["mo"].append(_as_json(recorded))
    finally:
        smsc.stop()
        recorder.close()
    if capture:
        capture.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"\nwrote {capture}")
    return 0


def _show(recorded: dict[str, Any], parsed: str) -> None:
    print(f"   {recorded['method']} {recorded['path']}\n      -> {parsed}")


async def _submit(adapter: KannelProvider, request: SubmitRequest) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        adapter._client = client
        await adapter.submit(request)


def _as_json(recorded: dict[str, Any]) -> dict[str, Any]:
    return {**recorded, "body": recorded["body"].decode("utf-8", errors="backslashreplace")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, help="write the requests Kannel made to this JSON file")
    return run(parser.parse_args(argv).capture)


if __name__ == "__main__":
    raise SystemExit(main())

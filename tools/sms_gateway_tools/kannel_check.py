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
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from sms_gateway.adapters.providers.kannel import KannelProvider
from sms_gateway_tools.smpp_smsc import Outcome, Receipt, SmppSmsc
from sms_gateway_tools.upstream_check import (
    MO_SMS,
    ONE_PART_RECEIPTS,
    Recorder,
    Scenario,
    ScenarioPlan,
    callback_request,
    exercise,
    free_port,
    listening,
    smsc_and_recorder,
    stop,
    wait_for,
    write_capture,
)

__all__ = ["KANNEL_CONF", "Recorder", "callback_request", "free_port", "main", "stop"]

TOKEN = "kannel-check-token-0123456789abcdef"  # noqa: S105 (the throwaway Kannel this check starts)

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


SCENARIOS = (
    *ONE_PART_RECEIPTS,
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
            wait_for(functools.partial(listening, port), box)
        status = f"http://127.0.0.1:{ports['admin']}/status.txt?password=check"
        wait_for(lambda: smsc.bound and "online" in httpx.get(status, timeout=2).text, "the SMPP bind")
        about = subprocess.run(["bearerbox", "--version"], capture_output=True, text=True, check=False)  # noqa: S607
        version = re.search(r"version `([^']+)'", about.stdout)
        yield f"http://127.0.0.1:{ports['sendsms']}", version.group(1) if version else "unknown"
    finally:
        stop(started)


def run(capture: Path | None) -> int:
    if not (shutil.which("bearerbox") and shutil.which("smsbox")):
        print("Kannel is not installed (bearerbox, smsbox): apt-get install kannel", file=sys.stderr)
        return 2
    plan = ScenarioPlan(SCENARIOS[0])
    record: dict[str, Any] = {"kannel": "unknown", "smsc": "smpp (tools/sms_gateway_tools/smpp_smsc.py)"}
    with (
        smsc_and_recorder(plan) as (smsc, recorder),
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
        record |= exercise(
            adapter, smsc, recorder, plan=plan, scenarios=SCENARIOS, mo_sms=MO_SMS, ref_prefix="7", quiet=2.0
        )
    write_capture(capture, record)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, help="write the requests Kannel made to this JSON file")
    return run(parser.parse_args(argv).capture)


if __name__ == "__main__":
    raise SystemExit(main())

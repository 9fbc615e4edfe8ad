"""Run the Jasmin adapter against a real Jasmin over SMPP, and record every DLR and MO request Jasmin makes.

    PYTHONPATH=layers/core:tools .venv/bin/python -m sms_gateway_tools.jasmin_check --jasmind PATH [--capture FILE]

Needs Jasmin (`pip install jasmin` in a venv of its own, Python 3.11: `--jasmind` is that venv's `bin/jasmind.py`,
or `jasmind.py` on the PATH), `redis-server` and RabbitMQ (Debian's `redis-server` and `rabbitmq-server`); exits 2
when one is absent. Everything runs on free 127.0.0.1 ports in a temporary directory: Redis, a RabbitMQ node, jasmind
(with its DLR lookup, DLR thrower and deliver_sm thrower in process), a recorder standing in for our webhook (it
answers `ACK/Jasmin`, as the webhook does), and the SMSC of `smpp_smsc.py`, which Jasmin's SMPP client connector
binds to. Jasmin is configured through jCli as docs/providers-smsc.md says: a user, an SMPP client connector and a
default MT route to it, an HTTP client connector (POST) for MO and a default MO route to it. Its one change from
Jasmin's defaults: the `submit_error_retrial` delays are 2 s instead of 30 s and more, so a throttled submit is
retried within the run.

Each scenario submits through `JasminProvider.submit` (the /send it builds: dlr-url, dlr-level 3, dlr-method POST),
then prints the submit_sm PDUs the SMSC got, every DLR Jasmin posted and what the adapter parses of it. `--capture`
writes them as JSON: tests/fixtures/jasmin-0.11.0-smpp.json was written so (0.11.1 throws no DLR at
all, docs/providers-smsc.md), and the tests replay it without Jasmin.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sms_gateway.adapters.providers.jasmin import CALLBACK_ACK, JasminProvider
from sms_gateway_tools.smpp_smsc import Outcome, Receipt, SmppSmsc
from sms_gateway_tools.upstream_check import MO_SMS as COMMON_MO_SMS
from sms_gateway_tools.upstream_check import (
    ONE_PART_RECEIPTS,
    Scenario,
    ScenarioPlan,
    exercise,
    free_port,
    listening,
    smsc_and_recorder,
    stop,
    wait_for,
    write_capture,
)

TOKEN = "jasmin-check-token-0123456789abcdef"  # noqa: S105 (the throwaway Jasmin this check starts)
USERNAME, PASSWORD = "gw", "secret"
# ESME_RINVDSTADR (a refusal Jasmin does not retry) and ESME_RTHROTTLED (one it does, submit_error_retrial).
INVALID_DESTINATION, THROTTLED = 0x0B, 0x58

JASMIN_CFG = """\
[smpp-server]
bind = 127.0.0.1
port = {smpp_server}
[client-management]
bind = 127.0.0.1
port = {client_management}
[jcli]
bind = 127.0.0.1
port = {jcli}
authentication = False
[http-api]
bind = 127.0.0.1
port = {http_api}
[amqp-broker]
host = 127.0.0.1
port = {amqp}
spec = {spec}
[redis-client]
host = 127.0.0.1
port = {redis}
[sm-listener]
submit_error_retrial = {{'ESME_RSYSERR': {{'count': 2, 'delay': 2}}, 'ESME_RTHROTTLED': {{'count': 20, 'delay': 2}},
    'ESME_RMSGQFUL': {{'count': 2, 'delay': 2}}, 'ESME_RINVSCHED': {{'count': 2, 'delay': 2}}}}
"""


def _first_refused_then_taken(status: int) -> Callable[[int], Outcome]:
    """An SMSC that refuses a message's first submit with `status` and takes (and delivers) the next."""
    tries: list[int] = []

    def outcome(_part: int) -> Outcome:
        tries.append(1)
        return Outcome(command_status=status) if len(tries) == 1 else Outcome()

    return outcome


def scenarios() -> tuple[Scenario, ...]:
    return (
        Scenario("one part, delivered", "Hello there", lambda _: Outcome()),
        *ONE_PART_RECEIPTS,
        Scenario(
            "one part, accepted (ACCEPTD) then undelivered",
            "Hello there",
            lambda _: Outcome(receipts=(Receipt("ACCEPTD"), Receipt("UNDELIV", "001"))),
        ),
        Scenario(
            "one part, unknown (UNKNOWN) then delivered",
            "Hello there",
            lambda _: Outcome(receipts=(Receipt("UNKNOWN", "003"), Receipt("DELIVRD"))),
        ),
        Scenario(
            "one part, en route then undelivered",
            "Hello there",
            lambda _: Outcome(receipts=(Receipt("ENROUTE"), Receipt("UNDELIV", "001"))),
        ),
        Scenario("one part, rejected (REJECTD)", "Hello there", lambda _: Outcome(receipts=(Receipt("REJECTD"),))),
        Scenario("one part, refused by the SMSC", "Hello there", lambda _: Outcome(command_status=INVALID_DESTINATION)),
        Scenario(
            "one part, throttled by the SMSC once, then delivered", "Hello there", _first_refused_then_taken(THROTTLED)
        ),
        Scenario("UCS-2, one part, delivered", "Привет 😀", lambda _: Outcome()),
        Scenario("3 GSM parts, each delivered", "a" * 400, lambda _: Outcome()),
        Scenario(
            "3 GSM parts, part 1 undelivered",
            "a" * 400,
            lambda part: Outcome(receipts=(Receipt("UNDELIV", "001") if part == 1 else Receipt("DELIVRD"),)),
        ),
        Scenario(
            "3 GSM parts, part 3 undelivered",
            "a" * 400,
            lambda part: Outcome(receipts=(Receipt("UNDELIV", "001") if part == 3 else Receipt("DELIVRD"),)),
        ),
        Scenario(
            "3 GSM parts, part 1 refused by the SMSC",
            "a" * 400,
            lambda part: Outcome(command_status=INVALID_DESTINATION) if part == 1 else Outcome(),
        ),
        Scenario(
            "3 GSM parts, part 3 refused by the SMSC",
            "a" * 400,
            lambda part: Outcome(command_status=INVALID_DESTINATION) if part == 3 else Outcome(),
        ),
        Scenario(
            "3 UCS-2 parts, emoji on the boundary, part 2 refused by the SMSC",
            "я" * 66 + "😀" + "я" * 66,
            lambda part: Outcome(command_status=INVALID_DESTINATION) if part == 2 else Outcome(),
        ),
    )


# Jasmin hands an MO's septets on as they came: one with an escape shows how.
MO_SMS = (*COMMON_MO_SMS, ("GSM with an escape (euro)", 0, b"", b"Price 5\x1be"))


class JCli:
    """Jasmin's jCli console over a plain socket (telnet without options): one command, its output up to the prompt."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # Its welcome comes without a prompt: an empty line brings one.
        self.sock.sendall(b"\r\n")
        self._read_until((b"jcli : ",))

    def _read_until(self, prompts: tuple[bytes, ...]) -> str:
        buffer = b""
        while not buffer.endswith(prompts):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit(f"jCli closed the connection after {buffer!r}")
            buffer += chunk
        return buffer.decode("utf-8", errors="replace")

    def run(self, *lines: str) -> str:
        out = ""
        for line in lines:
            self.sock.sendall(line.encode() + b"\r\n")
            out += self._read_until((b"jcli : ", b"> "))
        if "error" in out.lower() or "unknown" in out.lower():
            raise SystemExit(f"jCli refused {lines}: {out}")
        return out

    def close(self) -> None:
        self.sock.close()


def configure(jcli_port: int, smsc_port: int, inbound_url: str) -> None:
    """Jasmin as docs/providers-smsc.md sets it up: our user, its SMSC and routes, and MO posted to our webhook."""
    jcli = JCli(jcli_port)
    try:
        jcli.run("group -a", "gid gw", "ok")
        jcli.run("user -a", f"username {USERNAME}", f"password {PASSWORD}", "gid gw", "uid gw", "ok")
        jcli.run("smppccm -a", "cid smsc", "host 127.0.0.1", f"port {smsc_port}", "username gw", "password pw", "ok")
        jcli.run("smppccm -1 smsc")
        jcli.run("mtrouter -a", "type DefaultRoute", "connector smppc(smsc)", "rate 0.00", "ok")
        jcli.run("httpccm -a", "cid webhook", f"url {inbound_url}", "method POST", "ok")
        jcli.run("morouter -a", "type DefaultRoute", "connector http(webhook)", "ok")
    finally:
        jcli.close()


def _rabbitmq_server() -> str | None:
    # Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user, who cannot write our temporary directory.
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(direct) if direct.exists() else shutil.which("rabbitmq-server")


def _spawn(
    directory: Path, name: str, command: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with (directory / f"{name}.out").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603


@contextmanager
def running_jasmin(directory: Path, jasmind: str, smsc: SmppSmsc, webhook: str) -> Iterator[tuple[str, str]]:
    """Redis, RabbitMQ and jasmind on 127.0.0.1, Jasmin bound to `smsc`: yields its HTTP API URL and version."""
    names = ("redis", "amqp", "amqp_dist", "smpp_server", "client_management", "jcli", "http_api")
    ports = {name: free_port() for name in names}
    root = directory / "root"
    for sub in ("etc/jasmin/store", "var/log/jasmin", "rabbitmq/home"):
        (root / sub).mkdir(parents=True)
    jasmin_site = Path(jasmind).resolve().parents[1] / "lib"
    [spec] = sorted(jasmin_site.glob("python3*/site-packages/txamqp/specs/standard/amqp0-9-1.stripped.xml"))
    cfg = root / "etc/jasmin/jasmin.cfg"
    cfg.write_text(JASMIN_CFG.format(spec=spec, **ports))
    plugins = root / "rabbitmq/enabled_plugins"
    plugins.write_text("[].\n")
    rabbit_env = {
        **os.environ,
        "HOME": str(root / "rabbitmq/home"),
        "RABBITMQ_NODENAME": f"jasmin-check-{ports['amqp']}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(ports["amqp"]),
        "RABBITMQ_DIST_PORT": str(ports["amqp_dist"]),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(root / "rabbitmq/mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "rabbitmq/log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_PID_FILE": str(root / "rabbitmq/pid"),
    }
    started: list[subprocess.Popen[bytes]] = []
    try:
        redis = ["redis-server", "--bind", "127.0.0.1", "--port", str(ports["redis"]), "--save", "", "--dir", str(root)]
        started.append(_spawn(directory, "redis", redis))
        started.append(_spawn(directory, "rabbitmq", [str(_rabbitmq_server())], rabbit_env))
        wait_for(functools.partial(listening, ports["redis"]), "Redis")
        wait_for(functools.partial(listening, ports["amqp"]), "RabbitMQ", timeout=90)
        jasmin_env = {**os.environ, "ROOT_PATH": str(root)}
        command = [jasmind, "-c", str(cfg), "--enable-dlr-thrower", "--enable-dlr-lookup"]
        usage = subprocess.run([jasmind, "--help"], capture_output=True, text=True, check=False).stdout  # noqa: S603
        if "--enable-deliver-thrower" in usage:
            command.append("--enable-deliver-thrower")  # 0.11.1 throws MO in jasmind only when asked
        started.append(_spawn(directory, "jasmind", command, jasmin_env))
        wait_for(functools.partial(listening, ports["jcli"]), "jasmind's jCli", timeout=60)
        configure(ports["jcli"], smsc.port, f"{webhook}/callbacks/jasmin/inbound?token={TOKEN}")
        wait_for(lambda: smsc.bound, "Jasmin's SMPP bind")
        yield f"http://127.0.0.1:{ports['http_api']}", _version(jasmind)
    finally:
        stop(started)


def _version(jasmind: str) -> str:
    python = Path(jasmind).resolve().parent / "python"
    found = subprocess.run(  # noqa: S603
        [str(python), "-c", "import jasmin; print(jasmin.get_release())"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "unknown"


def run(jasmind: str | None, capture: Path | None, logs: Path | None = None) -> int:
    missing = [
        what
        for what, found in (
            ("jasmind.py (pip install jasmin; --jasmind)", jasmind and Path(jasmind).exists()),
            ("redis-server (apt-get install redis-server)", shutil.which("redis-server")),
            ("rabbitmq-server (apt-get install rabbitmq-server)", _rabbitmq_server()),
        )
        if not found
    ]
    if missing or jasmind is None:
        print(f"Jasmin cannot run here, missing: {', '.join(missing)}", file=sys.stderr)
        return 2

    all_scenarios = scenarios()
    plan = ScenarioPlan(all_scenarios[0])
    record: dict[str, Any] = {"jasmin": "unknown", "smsc": "smpp (tools/sms_gateway_tools/smpp_smsc.py)"}
    with (
        smsc_and_recorder(plan, ack=CALLBACK_ACK.encode()) as (smsc, recorder),
        _work_directory(logs) as work,
        running_jasmin(work, jasmind, smsc, recorder.url) as (http_api, version),
    ):
        record["jasmin"] = version
        adapter = JasminProvider(
            name="jasmin", url=http_api, username=USERNAME, password=PASSWORD, callback_token=TOKEN, max_parts=10
        )
        print(f"Jasmin {version}, SMPP SMSC on 127.0.0.1:{smsc.port}")
        record |= exercise(
            adapter, smsc, recorder, plan=plan, scenarios=all_scenarios, mo_sms=MO_SMS, ref_prefix="9", quiet=5.0
        )
    if not any(scenario["callbacks"] for scenario in record["scenarios"]):
        # Jasmin 0.11.1's sm-listener fails on every submit_sm_resp (jookies/jasmin#1236): docs/providers-smsc.md
        print("\nJasmin threw no DLR at all: every message through it would expire, refunded", file=sys.stderr)
    write_capture(capture, record)
    return 0


@contextmanager
def _work_directory(logs: Path | None) -> Iterator[Path]:
    """`logs` (kept, for Jasmin's logs under root/var/log/jasmin) or a temporary directory."""
    if logs is not None:
        logs.mkdir(parents=True)
        yield logs
        return
    with tempfile.TemporaryDirectory(prefix="jasmin-check-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jasmind", default=shutil.which("jasmind.py"), help="jasmind.py of a venv Jasmin is in")
    parser.add_argument("--capture", type=Path, help="write the requests Jasmin made to this JSON file")
    parser.add_argument("--logs", type=Path, help="a new directory to run in and keep, Jasmin's logs included")
    args = parser.parse_args(argv)
    return run(args.jasmind, args.capture, args.logs)


if __name__ == "__main__":
    raise SystemExit(main())

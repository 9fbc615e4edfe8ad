"""What `sms-gateway local` and `sms-gateway simulate ...` do (cli.py only parses and dispatches)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sms_gateway_tools.admin import field_text
from sms_gateway_tools.localstack import stack as stack_module
from sms_gateway_tools.localstack.stack import LocalStack, read_stack_file

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_POLL_SECONDS = 0.2
DEMO_BODY = {
    "from": "48974",
    "to": "2348020000000",
    "message": "When was the last time you went to the cinema?",
    "session_id": "67543uhn3",
    "sent_date": "2024-01-02T23:50:37.000000Z",
}
# The inbound SMS the banner suggests: the demo number's reply. Not a keyword: until session 34 it was STOP, which
# opted that number out of the demo sender, so the curl above it and every README example were refused as opted out.
DEMO_REPLY = "Last week"


def run_local(*, port: int, dlr_delay: float, failure_rate: float, log_level: str) -> int:
    """Runs the local stack in the foreground until SIGINT or SIGTERM; returns the exit code."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping: list[int] = []  # the signals received; a plain list, as a handler must not take a lock (below)

    def on_signal(signum: int, _frame: object) -> None:
        # Only a flag: a handler that takes a lock (threading.Event.set) deadlocks when a second signal lands
        # while it holds it (`timeout` and make both sending SIGTERM, a double Ctrl-C). Further signals are
        # ignored until the stack has stopped; the main loop below polls the flag.
        stopping.append(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    stack = LocalStack(
        port=port,
        dlr_delay=dlr_delay,
        failure_rate=failure_rate,
        log_level=log_level,
        state_dir=stack_module.default_state_dir(),  # the shared .local/stack.json: only this stack claims it
    )
    try:
        stack.start()
        account = _demo_account(stack.api_url)
        print(banner(stack, account), flush=True)
        while not stopping:
            time.sleep(STOP_POLL_SECONDS)
        print("\nstopping the local stack ...", flush=True)
    except OSError as error:
        print(f"error: cannot start the local stack: {error}{_port_hint(error, port)}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _port_hint(error: OSError, port: int) -> str:
    if error.errno != errno.EADDRINUSE:
        return ""
    other = port + 1
    return f" (port {port} is taken: use another, as `PORT={other} make dev` or `{cli_command()} local --port {other}`)"


def _demo_account(api_url: str) -> dict[str, Any] | None:
    try:
        from sms_gateway_tools.admin import create_account
    except ImportError as error:
        print(f"warning: no demo account ({error})", file=sys.stderr)
        return None
    try:
        return create_account(name="demo", senders=["48974", "DemoCo"], credits=10000, api_url=api_url)
    except Exception as error:
        logging.getLogger("sms_gateway_tools.localstack").exception("creating the demo account failed")
        print(f"warning: no demo account ({error})", file=sys.stderr)
        return None


def banner(stack: LocalStack, account: dict[str, Any] | None) -> str:
    lines = [
        "",
        "SMS gateway: local stack is running (Ctrl-C to stop)",
        f"  API            {stack.api_url}",
        f"  portal         {stack.api_url}/portal   (sign in with an account's username and password)",
        f"  callbacks      {stack.callback_url}   (the webhook function's URL)",
        f"  simulator      {stack.simulator_url}   (GET /stats, GET /messages)",
        f"  moto           {stack.moto_endpoint}",
        f"  state file     {stack.state_file}",
    ]
    if account:
        lines += ["", "Demo account (credentials are shown once):"]
        width = max(len(str(key)) for key in account)
        lines += [f"  {key:<{width}}  {field_text(value)}" for key, value in account.items()]
        token = account.get("token", "<token>")
        lines += [
            "",
            "Send an SMS:",
            f"  curl -sS -X POST {stack.api_url}/ng/v1/sendsms \\",
            f"    -H 'Authorization: Bearer {token}' \\",
            "    -H 'Content-Type: application/json' \\",
            f"    -d '{json.dumps(DEMO_BODY)}'",
        ]
    lines += [
        "",
        "Simulate an inbound SMS:",
        f"  {cli_command()} simulate inbound --from {DEMO_BODY['to']} --to {DEMO_BODY['from']} "
        f"--message {shlex.quote(DEMO_REPLY)}",
        "",
    ]
    return "\n".join(lines)


def cli_command() -> str:
    """This CLI as a command that runs from the repository root in any shell: the script installed beside this
    Python (`.venv/bin/sms-gateway`), which is not on PATH unless the virtualenv is activated."""
    script = Path(sys.executable).absolute().parent / "sms-gateway"
    if not script.exists():
        return "sms-gateway"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _running_stack(state_dir: Path | None) -> dict[str, Any] | None:
    """The running local stack's state file, or None after saying on stderr that none is running."""
    state = read_stack_file(state_dir)
    if state is None or not state.get("simulator_url"):
        print(
            "error: no local stack is running (start one with `make dev` or `sms-gateway local`)",
            file=sys.stderr,
        )
        return None
    return state


def _local_upstreams(state_dir: Path | None) -> tuple[Any, str]:
    """Points this process at the running local stack; returns its moto's SSM client and the upstreams' prefix."""
    from sms_gateway.adapters import aws
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import use_local_stack

    use_local_stack((state_dir or stack_module.default_state_dir()) / stack_module.STATE_FILE_NAME)
    return aws.client("ssm"), gateway().settings.upstream_parameter_prefix


def _is_upstream_name(name: str) -> bool:
    from sms_gateway.domain.routing import UPSTREAM_NAME

    if UPSTREAM_NAME.fullmatch(name):
        return True
    print(f"error: {name!r} is not an upstream name: lowercase letters, digits, '-' and '_'", file=sys.stderr)
    return False


def add_upstream(*, name: str, state_dir: Path | None = None) -> int:
    """Configures upstream `name` in the running local stack as a copy of the simulator's parameter (its URL and
    secret): the simulator then takes the messages routed to `name`, and `admin set-route` accepts the name."""
    from botocore.exceptions import BotoCoreError, ClientError

    from sms_gateway_tools.admin import TargetNotFound
    from sms_gateway_tools.localstack.resources import UPSTREAM_NAME as SIMULATOR

    if not _is_upstream_name(name) or _running_stack(state_dir) is None:
        return 2
    try:
        ssm, prefix = _local_upstreams(state_dir)
        config = ssm.get_parameter(Name=f"{prefix}{SIMULATOR}", WithDecryption=True)["Parameter"]["Value"]
        parameter = f"{prefix}{name}"
        try:
            ssm.put_parameter(Name=parameter, Type="SecureString", Value=config, Overwrite=False)
        except ssm.exceptions.ParameterAlreadyExists:
            if ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"] != config:
                print(f"error: upstream {name!r} is configured already ({parameter}): left as it is", file=sys.stderr)
                return 2
    except (TargetNotFound, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"upstream {name!r} configured ({parameter}): the simulator takes its messages")
    return 0


def simulate_inbound(
    *, sender: str, to: str, message: str, upstream: str | None = None, state_dir: Path | None = None
) -> int:
    """Delivers an inbound SMS to the running stack and prints the answer: through the simulator's own upstream
    (`simulator`), or, with `upstream`, as that upstream (one `simulate add-upstream` added) posts it."""
    import httpx

    from sms_gateway_tools.localstack.resources import UPSTREAM_NAME as SIMULATOR

    if upstream is not None and not _is_upstream_name(upstream):
        return 2
    state = _running_stack(state_dir)
    if state is None:
        return 2
    if upstream is not None and upstream != SIMULATOR:
        return _inbound_as(upstream, state, state_dir, sender=sender, to=to, message=message)
    try:
        response = httpx.post(
            f"{state['simulator_url']}/control/inbound",
            json={"from": sender, "to": to, "message": message},
            timeout=30,
        )
    except httpx.HTTPError as error:
        print(f"error: the local stack at {state['simulator_url']} does not answer: {error}", file=sys.stderr)
        return 2
    print(json.dumps(response.json() if response.content else {}, indent=2))
    if response.status_code != 200:
        return 1
    return 0 if response.json().get("delivered") else 1


def _inbound_as(
    upstream: str, state: dict[str, Any], state_dir: Path | None, *, sender: str, to: str, message: str
) -> int:
    """Posts an inbound SMS to /callbacks/<upstream>/inbound signed with that upstream's secret, as the simulator
    posts its own: the gateway takes it as coming from `upstream`, so a number routed to it accepts it."""
    import httpx
    from botocore.exceptions import BotoCoreError, ClientError

    from sms_gateway_tools.admin import TargetNotFound
    from sms_gateway_tools.simulator import inbound_payload, signed_headers

    try:
        ssm, prefix = _local_upstreams(state_dir)
        try:
            value = ssm.get_parameter(Name=f"{prefix}{upstream}", WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            print(
                f"error: no upstream named {upstream!r} on the local stack: add it first with "
                f"`{cli_command()} simulate add-upstream {upstream}`",
                file=sys.stderr,
            )
            return 2
    except (TargetNotFound, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = _json_object(value)
    if config.get("type") != "simulator" or not isinstance(config.get("secret"), str):
        print(
            f"error: upstream {upstream!r} is a {config.get('type')!r} upstream, not one the simulator serves: "
            "post its inbound SMS as that upstream does (docs/local-stack.md, Other upstreams)",
            file=sys.stderr,
        )
        return 2
    payload = inbound_payload(sender, to, message)
    body = json.dumps(payload, separators=(",", ":"))
    url = f"{state['callback_url']}/callbacks/{upstream}/inbound"
    try:
        response = httpx.post(url, content=body.encode(), headers=signed_headers(config["secret"], body), timeout=30)
    except httpx.HTTPError as error:
        print(f"error: the local stack at {state['callback_url']} does not answer: {error}", file=sys.stderr)
        return 2
    delivered = response.is_success
    answer = {"message_id": payload["message_id"], "upstream": upstream, "delivered": delivered}
    print(json.dumps(answer | {"status": response.status_code}, indent=2))
    return 0 if delivered else 1


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

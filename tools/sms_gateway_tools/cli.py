"""The `sms-gateway` command: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sms_gateway_tools.arguments import number, port, share, whole_number


def _local(args: argparse.Namespace) -> int:
    from sms_gateway_tools.localstack.commands import run_local

    return run_local(port=args.port, dlr_delay=args.dlr_delay, failure_rate=args.failure_rate, log_level=args.log_level)


def _simulate_inbound(args: argparse.Namespace) -> int:
    from sms_gateway_tools.localstack.commands import simulate_inbound

    return simulate_inbound(sender=args.sender, to=args.to, message=args.message, upstream=args.upstream)


def _simulate_add_upstream(args: argparse.Namespace) -> int:
    from sms_gateway_tools.localstack.commands import add_upstream

    return add_upstream(name=args.name)


def _chaos(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sms_gateway_tools.chaos.runner import ChaosOptions, run_chaos

    options = ChaosOptions(
        messages=args.messages,
        seed=args.seed,
        time_limit=args.time_limit,
        wave=args.wave,
        accounts=args.accounts,
        kill_rate=args.kill_rate,
        send_step_failure_rate=args.send_failure_rate,
        scheduled_share=args.scheduled_share,
        cancel_share=args.cancel_share,
        upstream_deduplicates=args.upstream_deduplicates,
        **({"dlr_wait_seconds": args.dlr_wait} if args.dlr_wait is not None else {}),
    )
    return run_chaos(options, json_path=Path(args.json) if args.json else None)


def _dlr_wait(raw: str) -> int:
    """--dlr-wait as the gateway's settings take it (imported only when the flag is given: they load pydantic)."""
    from sms_gateway.settings import MAX_DLR_WAIT_SECONDS

    return whole_number(1, MAX_DLR_WAIT_SECONDS)(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sms-gateway", description="SMS gateway developer and operator tools")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    local = commands.add_parser("local", help="run the whole gateway locally (moto, no AWS, no Docker)")
    local.add_argument("--port", type=port, default=3000, help="API port on 127.0.0.1 (default 3000; 0: any free port)")
    local.add_argument("--dlr-delay", type=number(0), default=0.3, help="seconds before the simulator's DLR")
    local.add_argument("--failure-rate", type=share, default=0.0, help="fraction of messages reported UNDELIV (0 to 1)")
    local.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="console log level of the stack and the functions (default WARNING)",
    )
    local.set_defaults(func=_local)

    simulate = commands.add_parser("simulate", help="drive the running local stack's upstream simulator")
    simulate_commands = simulate.add_subparsers(dest="simulate_command", required=True, metavar="WHAT")
    inbound = simulate_commands.add_parser("inbound", help="deliver an inbound SMS to the gateway")
    inbound.add_argument("--from", dest="sender", required=True, help="the mobile number sending")
    inbound.add_argument("--to", required=True, help="the shortcode or number receiving")
    inbound.add_argument("--message", required=True, help="the text")
    inbound.add_argument(
        "--upstream",
        metavar="NAME",
        help="the upstream it comes from: one `simulate add-upstream` added (default: simulator)",
    )
    inbound.set_defaults(func=_simulate_inbound)
    upstream = simulate_commands.add_parser(
        "add-upstream",
        help="configure another upstream name (kannel, jasmin, ...) that the simulator serves, to try routes locally",
    )
    upstream.add_argument("name", help="the upstream's name, as set-route takes it (lowercase, digits, '-', '_')")
    upstream.set_defaults(func=_simulate_add_upstream)

    chaos = commands.add_parser(
        "chaos", help="send messages through the local stack with faults injected and check nothing is lost or doubled"
    )
    chaos.add_argument("--messages", type=whole_number(1), default=5000, help="messages to send (default 5000)")
    chaos.add_argument("--seed", type=int, default=1, help="seed of the sends and the injected faults (default 1)")
    chaos.add_argument(
        "--time-limit",
        type=number(0, above=True),
        default=3600.0,
        help="seconds after which the run stops and reports (default 3600)",
    )
    chaos.add_argument(
        "--wave", type=whole_number(1), default=500, help="messages sent before waiting for the queues to drain"
    )
    chaos.add_argument("--accounts", type=whole_number(1), default=8, help="accounts sending (each its own FIFO lanes)")
    shares = {
        "--kill-rate": (0.02, "share of messages whose dispatcher is killed mid-submit"),
        "--send-failure-rate": (
            0.02,
            "share of sends whose storing, queueing or queueing answer fails at the api (each step)",
        ),
        "--scheduled-share": (0.3, "share of bulk sends scheduled 3-15 s ahead (send_at)"),
        "--cancel-share": (
            0.5,
            "share of scheduled sends the client cancels, before, while or just after their schedule fires",
        ),
    }
    for flag, (default, help_text) in shares.items():
        chaos.add_argument(flag, type=share, default=default, help=f"{help_text}, 0 to 1 (default {default})")
    chaos.add_argument(
        "--upstream-deduplicates",
        action="store_true",
        help="let the gateway count on the simulator answering a repeated submit instead of sending again (as 9bits "
        "does); by default it is treated like Kannel, and any repeat is a message sent twice",
    )
    chaos.add_argument(
        "--dlr-wait",
        type=_dlr_wait,
        help="seconds a submitted message waits for a final DLR before its settle check expires it (default: "
        "ChaosOptions.dlr_wait_seconds, minutes; deployed: 48 h)",
    )
    chaos.add_argument("--json", help="also write the summary as JSON to this file")
    chaos.set_defaults(func=_chaos)

    try:
        from sms_gateway_tools import admin
    except ImportError:
        admin = None  # type: ignore[assignment]
    register = getattr(admin, "register", None)
    if callable(register):
        register(commands)

    from sms_gateway_tools import client_commands

    client_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: one line and the shell's code for it (128 + SIGINT), not a traceback. `send --csv` catches it
        # itself, to finish the rows in flight and say how to send the others.
        from sms_gateway_tools.client_commands import INTERRUPTED

        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

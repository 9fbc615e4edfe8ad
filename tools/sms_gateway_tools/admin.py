"""`sms-gateway admin ...`: operator commands against the local stack or a deployed stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = REPO_ROOT / ".local" / "stack.json"


class TargetNotFound(Exception):
    pass


def use_local_stack(state_file: Path = STATE_FILE) -> str:
    """Points this process at a running local stack; returns its API URL."""
    if not state_file.exists():
        raise TargetNotFound("no local stack is running (start one with `make dev`), or pass --stack-name")
    state = json.loads(state_file.read_text())
    os.environ.update(state["env"])
    _forget_wiring()
    return str(state["api_url"])


def use_deployed_stack(stack_name: str) -> str:
    """Points this process at a deployed stack, found by its CloudFormation outputs; returns its API URL."""
    import boto3

    stacks = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    os.environ["TABLE_NAME"] = outputs["TableName"]
    os.environ["DISPATCH_QUEUE_URL"] = outputs.get("DispatchQueueUrl", "")
    os.environ["NOTIFY_QUEUE_URL"] = outputs.get("NotifyQueueUrl", "")
    _forget_wiring()
    return outputs["ApiUrl"]


def _forget_wiring() -> None:
    from sms_gateway import bootstrap

    bootstrap.reset()


def create_account(
    *,
    name: str,
    senders: list[str],
    credits: int,
    default_country: str = "NG",
    api_url: str | None = None,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
) -> dict[str, Any]:
    """Creates an account in the stack this process points at; returns its credentials, shown once."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    account, credentials = accounts.create_account(
        gateway().store,
        name=name,
        senders=senders,
        credits=credits,
        now=utc_now(),
        default_country=default_country,
        dlr_url=dlr_url,
        inbound_url=inbound_url,
        allow_http_webhooks=gateway().settings.allow_http_webhooks,
    )
    return {
        "account_id": account.account_id,
        "name": account.name,
        "token": credentials.token,
        "apikey": credentials.apikey,
        "partner_id": credentials.partner_id,
        "username": credentials.username,
        "password": credentials.password,
        "senders": list(account.senders),
        "credits": account.credits,
        "webhook_token": account.webhook_token,
        "dlr_url": account.dlr_url,
        "inbound_url": account.inbound_url,
        "api_url": api_url,
    }


def _target(args: argparse.Namespace) -> str:
    return use_deployed_stack(args.stack_name) if args.stack_name else use_local_stack()


def _cmd_create_account(args: argparse.Namespace) -> int:
    from sms_gateway.errors import GatewayError

    try:
        api_url = _target(args)
        created = create_account(
            name=args.name,
            senders=args.sender or [],
            credits=args.credits,
            default_country=args.country,
            api_url=api_url,
            dlr_url=args.dlr_url,
            inbound_url=args.inbound_url,
        )
    except (TargetNotFound, GatewayError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(created))
    else:
        width = max(len(key) for key in created)
        for key, value in created.items():
            print(f"{key:<{width}}  {value}")
    return 0


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="operator commands (accounts, credentials, ...)")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    create = commands.add_parser("create-account", help="create an account and print its credentials once")
    create.add_argument("--name", required=True, help="the account's display name")
    create.add_argument("--sender", action="append", help="a sender ID or shortcode to register (repeatable)")
    create.add_argument("--credits", type=int, default=0, help="opening credit balance")
    create.add_argument("--country", default="NG", help="default country for local numbers (ISO code)")
    create.add_argument("--dlr-url", help="the client's webhook for delivery reports")
    create.add_argument("--inbound-url", help="the client's webhook for inbound (two-way) SMS")
    create.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    create.add_argument("--stack-name", help="a deployed CloudFormation stack instead of the local stack")
    create.set_defaults(func=_cmd_create_account)

"""`sms-gateway admin ...`: operator commands against the local stack or a deployed stack."""

from __future__ import annotations

import argparse
import contextlib
import decimal
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = REPO_ROOT / ".local" / "stack.json"


# Makes one admin subcommand: (name, help, *parent parsers) -> its parser.
Command = Callable[..., argparse.ArgumentParser]


class TargetNotFound(Exception):
    pass


class TopUpUnsure(Exception):
    """A top-up's write got no answer (after botocore's retries): it may have been applied or not. The same top-up
    run again with its request id within 10 minutes adds the credits once."""

    def __init__(self, request_id: str, error: Exception) -> None:
        super().__init__(
            f"{error}\nthe credits may or may not have been added; the same top-up run again within 10 minutes with "
            f"this request id adds them only if they were not: --request-id {request_id}"
        )
        self.request_id = request_id


def use_local_stack(state_file: Path | None = None) -> str:
    """Points this process at a running local stack; returns its API URL."""
    state_file = state_file or STATE_FILE
    if not state_file.exists():
        raise TargetNotFound("no local stack is running (start one with `make dev`), or pass --stack-name")
    try:
        state = json.loads(state_file.read_text())
        environment, api_url = dict(state["env"]), str(state["api_url"])
    except (ValueError, KeyError, TypeError) as error:
        raise TargetNotFound(
            f"the local stack's state file {state_file} is unreadable ({error!r}): restart `make dev`"
        ) from error
    os.environ.update({str(name): str(value) for name, value in environment.items()})
    _forget_wiring()
    return api_url


def describe_stack(stack_name: str) -> list[Any]:
    """The deployed stack's CloudFormation description (a list of one stack)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from sms_gateway.adapters.aws import region_name

    try:
        return boto3.client("cloudformation", region_name=region_name()).describe_stacks(StackName=stack_name)["Stacks"]
    except (BotoCoreError, ClientError) as error:
        raise TargetNotFound(f"cannot read stack {stack_name!r}: {error}") from error


def stack_outputs(stacks: list[Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])} if stacks else {}


def use_deployed_stack(stack_name: str) -> str:
    """Points this process at a deployed stack, found by its CloudFormation outputs; returns its API URL."""
    stacks = describe_stack(stack_name)
    outputs = stack_outputs(stacks)
    if "TableName" not in outputs:
        raise TargetNotFound(f"stack {stack_name!r} has no TableName output: is it an sms-gateway stack?")
    os.environ["TABLE_NAME"] = outputs["TableName"]
    os.environ["DISPATCH_QUEUE_URL"] = outputs.get("DispatchQueueUrl", "")
    # A stack from before the priority queue has none: its single sends share the dispatch queue.
    os.environ["PRIORITY_DISPATCH_QUEUE_URL"] = outputs.get("PriorityDispatchQueueUrl", "")
    os.environ["NOTIFY_QUEUE_URL"] = outputs.get("NotifyQueueUrl", "")
    # New accounts' and rotated webhook credentials are sealed with the stack's key (the operator needs kms:Encrypt).
    os.environ["WEBHOOK_CREDENTIALS_KEY_ID"] = outputs.get("WebhookCredentialsKeyArn", "")
    # Deployed functions never call http:// webhooks; a local stack's setting left in this shell must not apply.
    os.environ["ALLOW_HTTP_WEBHOOKS"] = "false"
    # The route commands name upstreams as the deployed functions see them: the stage's parameter prefix, and
    # the template's default upstream (the settings' default unless the stack says otherwise).
    stage = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", [])}.get("Stage")
    if stage:
        os.environ["UPSTREAM_PARAMETER_PREFIX"] = f"/sms-gateway/{stage}/upstreams/"
    if outputs.get("DefaultUpstream"):
        os.environ["DEFAULT_UPSTREAM"] = outputs["DefaultUpstream"]
    else:
        os.environ.pop("DEFAULT_UPSTREAM", None)
    _forget_wiring()
    return outputs.get("ApiUrl", "")


def _forget_wiring() -> None:
    from sms_gateway import bootstrap

    bootstrap.reset()


def create_account(
    *,
    name: str,
    senders: list[str],
    credits: int,
    default_country: str = "NG",
    timezone: str | None = None,
    api_url: str | None = None,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
) -> dict[str, Any]:
    """Creates an account in the stack this process points at; returns its credentials, shown once. Without a
    `timezone` the account takes its country's, where the country has only one."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    account, credentials, webhook = accounts.create_account(
        gateway().store,
        gateway().webhook_credentials,
        name=name,
        senders=senders,
        credits=credits,
        now=utc_now(),
        default_country=default_country,
        timezone=timezone,
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
        "default_country": account.default_country,
        "timezone": account.timezone,
        "webhook_token": webhook.token,
        "signing_secret": webhook.secret,
        "dlr_url": account.dlr_url,
        "inbound_url": account.inbound_url,
        "api_url": api_url,
    }


def _store() -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store


def _view(account: Any) -> dict[str, Any]:
    from sms_gateway.logic import accounts

    return accounts.account_view(account).model_dump(mode="json")


def issue_credential(*, account_id: str, kind: str) -> dict[str, Any]:
    """Issues a new token or API key; the secret is in the answer this once."""
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    return accounts.issue_credential(_store(), account_id, kind, now=utc_now()).model_dump(mode="json")


def list_credentials(*, account_id: str) -> list[dict[str, Any]]:
    from sms_gateway.logic import accounts

    return [info.model_dump(mode="json") for info in accounts.list_credentials(_store(), account_id)]


def revoke_credential(*, account_id: str, prefix: str, kind: str | None = None) -> dict[str, Any]:
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    revoked = accounts.revoke_credential(_store(), account_id, prefix, kind=kind, now=utc_now())
    return {"account_id": account_id, **revoked.model_dump(mode="json")}


def reset_password(*, account_id: str, keep_portal_credentials: bool = False) -> dict[str, Any]:
    """Sets a new /login (and portal) password, shown this once, ends every session opened before it and revokes
    the credentials made in the portal under the old one (unless `keep_portal_credentials`); answers those, the
    ones of unknown origin and the webhooks, for the operator to check."""
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    reset = accounts.reset_password(
        _store(), account_id, now=utc_now(), keep_portal_credentials=keep_portal_credentials
    )
    return reset.model_dump(mode="json")


def unlock_login(*, account_id: str) -> dict[str, Any]:
    """Clears the failed-attempt lock of the account's login (session-key /login and portal sign-in)."""
    from sms_gateway.logic import accounts

    return accounts.unlock_login(_store(), account_id).model_dump(mode="json")


def add_sender(*, account_id: str, sender: str, inbound_upstreams: list[str] | None = None) -> dict[str, Any]:
    """`inbound_upstreams`: the upstreams that may deliver its inbound SMS (set_sender); none: its routes'."""
    from sms_gateway.logic import accounts

    _require_upstreams(inbound_upstreams or [])
    added = accounts.add_sender(_store(), account_id, sender, inbound_upstreams=inbound_upstreams)
    # The opt-outs the sender kept from the account that released it (docs/opt-outs.md, "A sender that moves").
    return {
        **_view_with_inbound(added.account),
        "opt_outs_carried_over": added.opt_outs_carried_over,
        "released_by": added.released_by,
    }


def set_sender(*, account_id: str, sender: str, inbound_upstreams: list[str]) -> dict[str, Any]:
    """Binds the inbound SMS of one of the account's numbers to exactly `inbound_upstreams` (each configured); an
    empty list puts it back on the upstreams the account's routes name."""
    from sms_gateway.logic import accounts

    _require_upstreams(inbound_upstreams)
    registration = accounts.set_inbound_upstreams(_store(), account_id, sender, inbound_upstreams)
    routed = _store().route_table(_default_upstream()).upstreams_for_account(account_id)
    return {
        "account_id": account_id,
        "sender": sender.strip(),
        "inbound_upstreams": sorted(registration.inbound_upstreams_with(routed)),
        "set": registration.inbound_upstreams is not None,
    }


def _require_upstreams(names: list[str]) -> None:
    from sms_gateway.logic import accounts

    for name in accounts.inbound_upstream_names(names) or ():
        _require_upstream(name)


def _view_with_inbound(account: Any) -> dict[str, Any]:
    """The account's view, with the upstreams each of its numbers takes inbound SMS from now (`inbound_upstreams`)
    and the numbers whose list an operator set (`inbound_upstreams_set`; the others follow the routes)."""
    from sms_gateway.logic import accounts

    shown = accounts.senders_inbound(_store(), account, _store().route_table(_default_upstream()))
    return {
        **_view(account),
        "inbound_upstreams": {sender.sender: list(sender.taken_from) for sender in shown},
        "inbound_upstreams_set": [sender.sender for sender in shown if sender.inbound_upstreams is not None],
    }


def remove_sender(*, account_id: str, sender: str) -> dict[str, Any]:
    from sms_gateway.logic import accounts

    return _view(accounts.remove_sender(_store(), account_id, sender))


def list_sender_requests(*, account_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Sender ID and shortcode requests accounts made in the portal: one account's, or all of them."""
    from sms_gateway.logic import accounts, sender_requests

    if account_id is not None:
        accounts.require_account(_store(), account_id)  # an unknown account is an error, not an empty listing
    listed = sender_requests.list_requests_as_shown(_store(), account_id, status)
    return [{**request.model_dump(mode="json"), "status": shown} for request, shown in listed]


def approve_sender(*, account_id: str, sender: str) -> dict[str, Any]:
    """Registers the requested sender to the account (as add-sender does) and marks the request approved."""
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import sender_requests

    return sender_requests.approve(_store(), account_id, sender, now=utc_now()).model_dump(mode="json")


def reject_sender(*, account_id: str, sender: str, reason: str) -> dict[str, Any]:
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import sender_requests

    return sender_requests.reject(_store(), account_id, sender, reason, now=utc_now()).model_dump(mode="json")


def set_price(*, tier: str, network: str, credits: int, country: str | None = None) -> dict[str, Any]:
    from sms_gateway.logic import accounts

    table = accounts.set_price(_store(), tier=tier, network=network, credits=credits, country=country)
    return table.model_dump(mode="json")


def show_prices() -> dict[str, Any]:
    from sms_gateway.domain.pricing import DEFAULT_PRICE_PER_PART
    from sms_gateway.logic import accounts

    table = accounts.show_prices(_store())
    return {**table.model_dump(mode="json"), "default_per_part": DEFAULT_PRICE_PER_PART}


def top_up(*, account_id: str, credits: int, request_id: str | None = None) -> dict[str, Any]:
    """Adds the credits, then reads the balance back (`credits`; None when that read failed: the credits were added
    all the same). `request_id` (else a new one; in the answer) makes it safe to run again within 10 minutes: the
    same top-up with the same id adds the credits once, and run again answers `already_applied` (`added` 0, with
    what the earlier run added, `added_then`, and when, `applied_at`). TopUpUnsure when the write got no answer."""
    import secrets

    from botocore.exceptions import BotoCoreError, ClientError

    from sms_gateway.domain.models import iso
    from sms_gateway.logic import accounts

    store = _store()
    request_id = secrets.token_hex(16) if request_id is None else request_id
    try:
        # A request id used for another top-up is refused by the store (Conflict), nothing added.
        outcome = accounts.top_up(store, account_id, credits, request_id=request_id)
    except (BotoCoreError, ClientError) as error:
        raise TopUpUnsure(request_id, error) from error
    answer: dict[str, Any] = {
        "account_id": account_id,
        # What this run added: nothing when an earlier run under the request id did it (an operator reading `added`
        # again took it for a second top-up).
        "added": 0 if outcome.already_applied else credits,
        "credits": None,
        "request_id": request_id,
        "already_applied": outcome.already_applied,
    }
    if outcome.already_applied:
        answer |= {"added_then": credits, "applied_at": iso(outcome.applied_at) if outcome.applied_at else None}
    # Added all the same when the read back fails: the answer says so, with the balance unknown (`_show_top_up`).
    with contextlib.suppress(BotoCoreError, ClientError):
        answer["credits"] = store.balance(account_id)
    return answer


def show_account(*, account_id: str) -> dict[str, Any]:
    from sms_gateway.logic import accounts

    return _view_with_inbound(accounts.require_account(_store(), account_id))


def set_webhooks(
    *,
    account_id: str,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
    rotate_token: bool = False,
    rotate_secret: bool = False,
) -> dict[str, Any]:
    """Changes the client's webhooks; a rotated webhook token or signing secret is in the answer this once."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    account, rotated = accounts.set_webhooks(
        _store(),
        gateway().webhook_credentials,
        account_id,
        dlr_url=dlr_url,
        inbound_url=inbound_url,
        rotate_token=rotate_token,
        allow_http=gateway().settings.allow_http_webhooks,
        rotate_secret=rotate_secret,
    )
    view = _view(account)
    if rotated.token:
        view = {**view, "webhook_token": rotated.token}
    return {**view, "signing_secret": rotated.secret} if rotated.secret else view


def seal_webhook_credentials() -> dict[str, Any]:
    """Seals in place the webhook credentials of accounts created before sealing (no rotation: clients keep theirs)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    return accounts.seal_plain_webhook_credentials(_store(), gateway().webhook_credentials).model_dump(mode="json")


def migrate_groups(
    *,
    account_id: str | None = None,
    dry_run: bool = False,
    progress: Callable[[str, str, str, str], None] | None = None,
) -> dict[str, Any]:
    """Moves the members of groups stored before 2026-12-06 out of their summary item (logic.groups.migrate_groups):
    of one account, or of all. `progress` is told of each group moved or failed."""
    from sms_gateway.logic import accounts, groups

    store = _store()
    if account_id is not None:
        accounts.require_account(store, account_id)
    return groups.migrate_groups(store, account_id=account_id, dry_run=dry_run, progress=progress).model_dump(
        mode="json"
    )


def backfill_send_times(*, account_id: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Gives the scheduled batches made before session 36 their entry by send time (logic.history.backfill_send_times):
    of one account, or of all."""
    from sms_gateway.logic import accounts, history

    store = _store()
    if account_id is not None:
        accounts.require_account(store, account_id)
    return history.backfill_send_times(store, account_id=account_id, dry_run=dry_run).model_dump(mode="json")


def set_account(
    *,
    account_id: str,
    country: str | None = None,
    timezone: str | None = None,
    rate_limit: int | None = None,
    max_parts: int | None = None,
    single_sends_in_order: bool | None = None,
) -> dict[str, Any]:
    from sms_gateway.logic import accounts

    account = accounts.set_account(
        _store(),
        account_id,
        country=country,
        timezone=timezone,
        rate_limit=rate_limit,
        max_parts=max_parts,
        single_sends_in_order=single_sends_in_order,
    )
    return _view(account)


def _default_upstream() -> str:
    from sms_gateway.bootstrap import gateway

    return gateway().settings.default_upstream


def _require_upstream(name: str) -> None:
    """A route to an upstream with no configuration, or one the dispatcher cannot build an adapter from, would fail
    every message it matches: refuse it up front, saying what to fix."""
    from botocore.exceptions import ClientError

    from sms_gateway.adapters import aws
    from sms_gateway.adapters.providers import InvalidUpstreamConfig, check_configuration, parameter_name
    from sms_gateway.errors import InvalidRequest, NotFound

    parameter = parameter_name(name)
    try:
        stored = aws.client("ssm").get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ParameterNotFound":
            raise NotFound(
                f"no upstream named {name!r} is configured (no parameter {parameter}): configure it first"
            ) from error
        raise
    try:
        check_configuration(name, stored)
    except InvalidUpstreamConfig as error:
        problem = str(error).removesuffix(f"; fix the parameter {parameter}")
        raise InvalidRequest(f"{problem}; fix the parameter {parameter} first") from error


def show_routes() -> dict[str, Any]:
    """The route table, most specific route first, and the default upstream for messages no route matches."""
    table = _store().route_table(_default_upstream())
    return {
        "default_upstream": table.default_upstream,
        "version": table.version,
        "routes": [route.model_dump(mode="json") for route in table.in_precedence_order()],
    }


def set_route(
    *,
    upstream: str,
    fallback: str | None = None,
    account_id: str | None = None,
    network: str | None = None,
    prefix: str | None = None,
    route_id: str | None = None,
) -> dict[str, Any]:
    """Adds a route, or replaces the route of the same id (by default the id is made from the match)."""
    from pydantic import ValidationError

    from sms_gateway.domain.routing import Route, default_route_id
    from sms_gateway.errors import InvalidRequest

    try:
        route = Route(
            route_id=route_id if route_id is not None else default_route_id(account_id, network, prefix),
            account_id=account_id,
            network=network,
            prefix=prefix,
            upstream=upstream,
            fallback=fallback,
        )
    except ValidationError as error:
        problems = (str(item["msg"]).removeprefix("Value error, ") for item in error.errors())
        raise InvalidRequest("; ".join(problems)) from error
    for name in (route.upstream, route.fallback):
        if name is not None:
            _require_upstream(name)
    return _edit_routes(lambda table: table.with_route(route), lambda store, version: store.put_route(route, version))


def remove_route(*, route_id: str) -> dict[str, Any]:
    return _edit_routes(
        lambda table: table.without_route(route_id), lambda store, version: store.remove_route(route_id, version)
    )


def _edit_routes(edit: Callable[[Any], Any], write: Callable[[Any, int], int]) -> dict[str, Any]:
    """Pins the numbers the edit takes an upstream away from (`pinned`), then writes it, conditional on the version
    read: a number is never left following routes that no longer name an upstream delivering its SMS."""
    from sms_gateway.errors import GatewayError
    from sms_gateway.logic import accounts

    store = _store()
    before = store.route_table(_default_upstream())
    try:
        after = edit(before)
    except (ValueError, LookupError):
        after = before  # refused: the write below says why, in the store's words, and nothing is pinned
    pinned = accounts.pin_inbound_before_route_change(store, before, after)
    try:
        write(store, before.version)
    except GatewayError as error:
        if not pinned:
            raise
        numbers = ", ".join(f"{number.sender} (account {number.account_id})" for number in pinned)
        raise type(error)(
            f"{error}; pinned before it, with what they take inbound SMS from now: {numbers} "
            f"(release each with set-sender --inbound-from-routes)"
        ) from error
    return {**show_routes(), "pinned": [number.model_dump(mode="json") for number in pinned]}


def pin_inbound(*, default_upstream: str) -> dict[str, Any]:
    """Before a deploy that makes `default_upstream` the default: pins the numbers that follow their routes and
    would lose an upstream by it (as a route edit does; the deploy itself cannot)."""
    from sms_gateway.domain.routing import upstream_name
    from sms_gateway.errors import InvalidRequest
    from sms_gateway.logic import accounts

    try:
        upstream_name(default_upstream, "default upstream")
    except ValueError as error:
        raise InvalidRequest(str(error)) from error
    _require_upstream(default_upstream)
    store = _store()
    before = store.route_table(_default_upstream())
    after = before.model_copy(update={"default_upstream": default_upstream})
    pinned = accounts.pin_inbound_before_route_change(store, before, after)
    return {
        "default_upstream": before.default_upstream,
        "new_default_upstream": default_upstream,
        "pinned": [number.model_dump(mode="json") for number in pinned],
    }


# ---------------------------------------------------------------- the command line


def _target(args: argparse.Namespace) -> str:
    return use_deployed_stack(args.stack_name) if args.stack_name else use_local_stack()


def field_text(value: Any) -> str:
    """A field as the text output prints it: `-` for none, a list comma-separated, yes or no."""
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {field_text(item)}" for key, item in value.items()) or "-"
    return str(value)


def _print_record(record: dict[str, Any]) -> None:
    width = max((len(key) for key in record), default=0)
    for key, value in record.items():
        print(f"{key:<{width}}  {field_text(value)}")


def _print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    _print_rows_read_twice(lambda: rows, columns)


def _print_rows_read_twice(rows: Callable[[], Iterable[dict[str, Any]]], columns: list[str]) -> None:
    """`_print_rows` of rows too many to hold (a bulk send's rejected rows, read from disk): `rows()` is gone through
    once for the columns' widths, then again to print them."""
    widths = [len(column) for column in columns]
    for row in rows():
        widths = [max(width, len(field_text(row.get(column)))) for width, column in zip(widths, columns, strict=True)]
    lines = itertools.chain([columns], ([field_text(row.get(column)) for column in columns] for row in rows()))
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _price_rows(prices: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    return [
        {"tier": tier, "network": network, "credits": credits}
        for tier, by_network in sorted(prices.items())
        for network, credits in sorted(by_network.items())
    ]


def _run(args: argparse.Namespace, action: Any, show: Any = None, note: str | None = None) -> int:
    """Points at the target, runs `action`, prints its answer (JSON with --json); errors go to stderr, exit 2."""
    from botocore.exceptions import BotoCoreError, ClientError

    from sms_gateway.errors import GatewayError

    try:
        api_url = _target(args)
        answer = action(api_url)
    except (TargetNotFound, TopUpUnsure, GatewayError, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except decimal.DecimalException as error:
        # boto3 refuses a number DynamoDB cannot hold (over 38 digits) before any request: a value no guard caught.
        print(f"error: a number too large for DynamoDB ({type(error).__name__})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer))
    elif show is not None:
        show(answer)
    else:
        _print_record(answer)
    if note and not args.json:
        print(note, file=sys.stderr)
    return 0


def _cmd_create_account(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda api_url: create_account(
            name=args.name,
            senders=args.sender or [],
            credits=args.credits,
            default_country=args.country,
            timezone=args.timezone,
            api_url=api_url,
            dlr_url=args.dlr_url,
            inbound_url=args.inbound_url,
        ),
        note="the secrets above are shown once: store them now",
    )


def _cmd_issue_credential(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: issue_credential(account_id=args.account, kind=args.kind),
        note="the secret above is shown once: store it now",
    )


def _cmd_list_credentials(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: list_credentials(account_id=args.account),
        show=lambda rows: _print_rows(rows, CREDENTIAL_COLUMNS),
    )


def _cmd_revoke_credential(args: argparse.Namespace) -> int:
    return _run(args, lambda _: revoke_credential(account_id=args.account, prefix=args.prefix, kind=args.kind))


CREDENTIAL_COLUMNS = ["kind", "prefix", "created_at", "created_by", "revoked", "revoked_at"]
# The credentials a reset answers, each list under its heading, with what the operator should do about it.
_RESET_LISTS = (
    ("revoked", "revoked: made in the portal under the old password"),
    (
        "not_revoked",
        "NOT revoked (failed): made in the portal under the old password: revoke them with revoke-credential",
    ),
    ("kept_made_in_portal", "kept (--keep-portal-credentials): made in the portal under the old password"),
    (
        "active_of_unknown_origin",
        "active, origin unknown (made before 2026-12-06): revoke any the customer did not make",
    ),
)


def _show_reset(reset: dict[str, Any]) -> None:
    _print_record({key: value for key, value in reset.items() if key not in dict(_RESET_LISTS)})
    for key, heading in _RESET_LISTS:
        if reset[key]:
            print(f"\n{heading}:")
            _print_rows(reset[key], CREDENTIAL_COLUMNS)
    if not reset["failed_logins_cleared"]:
        print(
            f"\nthe username's failed logins were NOT cleared (the password is reset): run unlock-login --account "
            f"{reset['account_id']}"
        )


def _cmd_reset_password(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: reset_password(account_id=args.account, keep_portal_credentials=args.keep_portal_credentials),
        show=_show_reset,
        note="the password above is shown once: store it now; every session opened before it is ended. Whoever held "
        "the old password could also have changed the webhooks, in the portal or through the API with a token made "
        "there (webhooks_changed_at, webhooks_changed_by): check dlr_url and inbound_url with the customer, and "
        "rotate the webhook token and signing secret (set-webhooks)",
    )


def _cmd_unlock_login(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: unlock_login(account_id=args.account),
        note="the login's failed logins are forgotten: it may log in again at once, and ten more wrong passwords "
        "from one source lock that source out again",
    )


def _cmd_add_sender(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: add_sender(account_id=args.account, sender=args.sender, inbound_upstreams=args.inbound_upstream),
    )


def _cmd_set_sender(args: argparse.Namespace) -> int:
    upstreams = [] if args.inbound_from_routes else args.inbound_upstream
    return _run(args, lambda _: set_sender(account_id=args.account, sender=args.sender, inbound_upstreams=upstreams))


def _upstream_argument(value: str) -> str:
    """An upstream name as argparse takes it: a malformed one is a usage error (exit 2) before anything is read."""
    from sms_gateway.domain.routing import upstream_name

    try:
        return upstream_name(value.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


_INBOUND_UPSTREAM_HELP = (
    "an upstream that may deliver this number's inbound SMS (repeatable): exactly these, any other's is dropped; "
    "an upstream that carries only inbound SMS must be named (default: the upstreams the account's routes name)"
)


def _cmd_remove_sender(args: argparse.Namespace) -> int:
    return _run(args, lambda _: remove_sender(account_id=args.account, sender=args.sender))


def _cmd_list_sender_requests(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: list_sender_requests(account_id=args.account, status=args.status),
        show=lambda rows: _print_rows(rows, ["account_id", "sender", "status", "requested_at", "decided_at", "reason"]),
    )


def _cmd_approve_sender(args: argparse.Namespace) -> int:
    return _run(args, lambda _: approve_sender(account_id=args.account, sender=args.sender))


def _cmd_reject_sender(args: argparse.Namespace) -> int:
    return _run(args, lambda _: reject_sender(account_id=args.account, sender=args.sender, reason=args.reason))


def _cmd_set_price(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: set_price(tier=args.tier, network=args.network, credits=args.credits, country=args.country),
        show=lambda table: _print_rows(_price_rows(table["prices"]), ["tier", "network", "credits"]),
    )


def _cmd_show_prices(args: argparse.Namespace) -> int:
    def show(table: dict[str, Any]) -> None:
        _print_rows(_price_rows(table["prices"]), ["tier", "network", "credits"])
        print(f"(a route with no price costs {table['default_per_part']} credit per part)")

    return _run(args, lambda _: show_prices(), show=show)


def _cmd_top_up(args: argparse.Namespace) -> int:
    return _run(
        args, lambda _: top_up(account_id=args.account, credits=args.credits, request_id=args.request_id), _show_top_up
    )


def _show_top_up(answer: dict[str, Any]) -> None:
    _print_record(answer)
    if answer["already_applied"]:
        balance = "unknown (see it with show-account)" if answer["credits"] is None else f"{answer['credits']} credits"
        print(
            f"request id {answer['request_id']} was already applied at {field_text(answer['applied_at'])}: it added "
            f"{answer['added_then']} credits then, and nothing was added now; the balance now is {balance}"
        )
    elif answer["credits"] is None:
        print("the credits were added; the balance could not be read: see it with show-account", file=sys.stderr)


def _cmd_show_account(args: argparse.Namespace) -> int:
    return _run(args, lambda _: show_account(account_id=args.account))


def _cmd_set_webhooks(args: argparse.Namespace) -> int:
    if args.dlr_url is None and args.inbound_url is None and not args.rotate_token and not args.rotate_secret:
        wanted = "--dlr-url, --inbound-url, --rotate-token or --rotate-secret"
        print(f"error: nothing to change: pass {wanted}", file=sys.stderr)
        return 2
    flags = (("webhook_token", args.rotate_token), ("signing_secret", args.rotate_secret))
    rotated = [name for name, on in flags if on]
    return _run(
        args,
        lambda _: set_webhooks(
            account_id=args.account,
            dlr_url=args.dlr_url,
            inbound_url=args.inbound_url,
            rotate_token=args.rotate_token,
            rotate_secret=args.rotate_secret,
        ),
        note=f"the new {' and '.join(rotated)} above: shown this once, give it to the client" if rotated else None,
    )


def _cmd_seal_webhook_credentials(args: argparse.Namespace) -> int:
    return _run(args, lambda _: seal_webhook_credentials())


def _tell_migration(event: str, group_id: str, account_id: str, why: str) -> None:
    # On stderr, so that --json prints one document on stdout.
    print(f"{event} {group_id} (account {account_id}){f': {why}' if why else ''}", file=sys.stderr, flush=True)


def _cmd_migrate_groups(args: argparse.Namespace) -> int:
    """Exit 1 when a group could not be moved (the report is printed all the same: run again for the rest)."""
    failed: list[int] = []

    def migrate(_: str) -> dict[str, Any]:
        report = migrate_groups(account_id=args.account, dry_run=args.dry_run, progress=_tell_migration)
        failed.append(report["failed"])
        return report

    def show(report: dict[str, Any]) -> None:
        _print_record(report)
        if report["dry_run"]:
            print(f"dry run: nothing was written; a run would move {report['moved']} group(s)")
        elif report["failed"]:
            print("some groups were not moved (above): run the command again to move them", file=sys.stderr)

    code = _run(args, migrate, show=show)
    return code or (1 if any(failed) else 0)


def _cmd_backfill_send_times(args: argparse.Namespace) -> int:
    def show(report: dict[str, Any]) -> None:
        _print_record(report)
        if report["dry_run"]:
            print(f"dry run: nothing was written; a run would add {report['added']} entry(ies)")

    return _run(args, lambda _: backfill_send_times(account_id=args.account, dry_run=args.dry_run), show=show)


_YES_OR_NO = {"yes": True, "no": False}


def _cmd_set_account(args: argparse.Namespace) -> int:
    settings = (args.country, args.timezone, args.rate_limit, args.max_parts, args.single_sends_in_order)
    if all(value is None for value in settings):
        print(
            "error: nothing to change: pass --country, --timezone, --rate-limit, --max-parts or "
            "--single-sends-in-order",
            file=sys.stderr,
        )
        return 2
    in_order = None if args.single_sends_in_order is None else _YES_OR_NO.get(args.single_sends_in_order.lower())
    if args.single_sends_in_order is not None and in_order is None:
        print(f"error: --single-sends-in-order takes yes or no, not {args.single_sends_in_order!r}", file=sys.stderr)
        return 2
    return _run(
        args,
        lambda _: set_account(
            account_id=args.account,
            country=args.country,
            timezone=args.timezone,
            rate_limit=args.rate_limit,
            max_parts=args.max_parts,
            single_sends_in_order=in_order,
        ),
    )


def _show_route_table(table: dict[str, Any]) -> None:
    default = table["default_upstream"]
    if not table["routes"]:
        print(f"no routes: every message goes to {default}, the default upstream (table version {table['version']})")
    else:
        _print_rows(table["routes"], ["route_id", "account_id", "network", "prefix", "upstream", "fallback"])
        print(
            f"(most specific first; any other message goes to {default}, the default upstream; "
            f"version {table['version']})"
        )
    _show_pinned(table.get("pinned", []), "the routes no longer name an upstream they took inbound SMS from")


def _show_pinned(pinned: list[dict[str, Any]], why: str) -> None:
    """The numbers a route change pinned, and the command that puts each back on its routes."""
    if not pinned:
        return
    print(f"\npinned {len(pinned)} number(s) that followed their routes ({why}); each now takes inbound SMS from:")
    for number in pinned:
        print(f"  account {number['account_id']}  {number['sender']}  {field_text(number['inbound_upstreams'])}")
    print("once an old upstream no longer delivers a number's SMS, put it back on its routes:")
    for number in pinned:
        print(
            f"  sms-gateway admin set-sender --account {number['account_id']} --sender {number['sender']}"
            " --inbound-from-routes"
        )


def _show_pin_inbound(answer: dict[str, Any]) -> None:
    new, pinned = answer["new_default_upstream"], answer["pinned"]
    if not pinned:
        print(f"no number loses an upstream when the default upstream becomes {new}: nothing pinned")
    _show_pinned(pinned, f"the default upstream {answer['default_upstream']} becomes {new}")
    print(f"now deploy with --parameter-overrides DefaultUpstream={new}")


def _cmd_set_route(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda _: set_route(
            upstream=args.upstream,
            fallback=args.fallback,
            account_id=args.account,
            network=args.network,
            prefix=args.prefix,
            route_id=args.route_id,
        ),
        show=_show_route_table,
    )


def _cmd_remove_route(args: argparse.Namespace) -> int:
    return _run(args, lambda _: remove_route(route_id=args.route_id), show=_show_route_table)


def _cmd_show_routes(args: argparse.Namespace) -> int:
    return _run(args, lambda _: show_routes(), show=_show_route_table)


def _cmd_pin_inbound(args: argparse.Namespace) -> int:
    return _run(args, lambda _: pin_inbound(default_upstream=args.default_upstream), show=_show_pin_inbound)


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    common.add_argument("--stack-name", help="a deployed CloudFormation stack instead of the local stack")
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", required=True, metavar="ID", help="the account id")

    admin = subparsers.add_parser(
        "admin",
        help="operator commands (accounts, credentials, senders, credits, prices, routes)",
        description="Operator commands. They act on the local stack (.local/stack.json, started by `make dev`) "
        "unless --stack-name names a deployed stack. Errors go to stderr with exit code 2.",
    )
    commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[*parents, common])

    _add_account_commands(command, account)
    _add_credential_commands(command, account)
    _add_price_commands(command)
    _add_route_commands(command)
    _add_opt_out_commands(command, account)


def _add_sender_commands(command: Command, account: argparse.ArgumentParser) -> None:
    add = command("add-sender", "register a sender ID or shortcode to the account (one owner each)", account)
    add.add_argument(
        "--sender", required=True, help="alphanumeric up to 11 characters with a letter, or a number of 3 to 15 digits"
    )
    add.add_argument(
        "--inbound-upstream", action="append", type=_upstream_argument, metavar="NAME", help=_INBOUND_UPSTREAM_HELP
    )
    add.set_defaults(func=_cmd_add_sender)

    sender = command(
        "set-sender", "set the upstreams that may deliver inbound SMS to one of the account's numbers", account
    )
    sender.add_argument("--sender", required=True, help="the account's sender ID, shortcode or long number")
    inbound = sender.add_mutually_exclusive_group(required=True)
    inbound.add_argument(
        "--inbound-upstream", action="append", type=_upstream_argument, metavar="NAME", help=_INBOUND_UPSTREAM_HELP
    )
    inbound.add_argument(
        "--inbound-from-routes",
        action="store_true",
        help="take its inbound SMS from the upstreams the account's routes name again (primaries and fallbacks)",
    )
    sender.set_defaults(func=_cmd_set_sender)

    remove = command("remove-sender", "release one of the account's sender IDs or shortcodes", account)
    remove.add_argument("--sender", required=True, help="the sender ID or shortcode")
    remove.set_defaults(func=_cmd_remove_sender)


def _add_account_commands(command: Command, account: argparse.ArgumentParser) -> None:
    create = command("create-account", "create an account and print its credentials once")
    create.add_argument("--name", required=True, help="the account's display name (1 to 100 characters)")
    create.add_argument("--sender", action="append", help="a sender ID or shortcode to register (repeatable)")
    create.add_argument("--credits", type=int, default=0, help="opening credit balance")
    create.add_argument("--country", default="NG", help="default country for local numbers (ISO code)")
    create.add_argument(
        "--timezone",
        help="IANA time zone local times are read in, e.g. Africa/Nairobi (default: the country's; needed for a "
        "country of several zones)",
    )
    create.add_argument("--dlr-url", help="the client's webhook for delivery reports")
    create.add_argument("--inbound-url", help="the client's webhook for inbound (two-way) SMS")
    create.set_defaults(func=_cmd_create_account)
    _add_sender_commands(command, account)

    requests = command("list-sender-requests", "list sender ID and shortcode requests made in the portal")
    requests.add_argument("--account", metavar="ID", help="only this account's requests")
    requests.add_argument(
        "--status",
        choices=["pending", "approved", "rejected", "released"],
        help="only requests in this state (released: approved, and the sender removed since)",
    )
    requests.set_defaults(func=_cmd_list_sender_requests)

    approve = command("approve-sender", "approve a sender request: registers the sender to the account", account)
    approve.add_argument("--sender", required=True, help="the requested sender ID or shortcode")
    approve.set_defaults(func=_cmd_approve_sender)

    reject = command("reject-sender", "reject a sender request; the account sees the reason in the portal", account)
    reject.add_argument("--sender", required=True, help="the requested sender ID or shortcode")
    reject.add_argument("--reason", required=True, help="why, in words the account will read")
    reject.set_defaults(func=_cmd_reject_sender)

    top = command("top-up", "add credits to an account's balance (atomic)", account)
    top.add_argument("--credits", required=True, type=int, help="credits to add (more than 0)")
    top.add_argument(
        "--request-id",
        metavar="ID",
        help="run again with the same ID within 10 minutes, the top-up adds the credits once "
        "(default: a new one, printed; up to 36 letters, digits and . _ : -)",
    )
    top.set_defaults(func=_cmd_top_up)

    show = command("show-account", "show an account's balance, senders, webhooks and settings (no secrets)", account)
    show.set_defaults(func=_cmd_show_account)

    hooks = command("set-webhooks", "set the client's webhook URLs or rotate its webhook token", account)
    hooks.add_argument("--dlr-url", metavar="URL", help="webhook for delivery reports ('' removes it)")
    hooks.add_argument("--inbound-url", metavar="URL", help="webhook for inbound (two-way) SMS ('' removes it)")
    hooks.add_argument(
        "--rotate-token", action="store_true", help="issue a new webhook token (the Bearer our calls carry)"
    )
    hooks.add_argument(
        "--rotate-secret", action="store_true", help="issue a new signing secret (the key of webhook-signature)"
    )
    hooks.set_defaults(func=_cmd_set_webhooks)

    seal = command(
        "seal-webhook-credentials",
        "seal with the stack's KMS key the webhook tokens and signing secrets of accounts created before sealing, "
        "in place (the same secrets: clients change nothing); scans the table once",
    )
    seal.set_defaults(func=_cmd_seal_webhook_credentials)

    migrate = command(
        "migrate-groups",
        "move the members of groups stored before 2026-12-06 out of the item the group list reads (each a conditional "
        "write on the group's version, as a member change makes it); safe to run again, or while clients change groups",
    )
    migrate.add_argument("--account", metavar="ID", help="only this account's groups (default: every account's)")
    migrate.add_argument("--dry-run", action="store_true", help="count the groups it would move; write nothing")
    migrate.set_defaults(func=_cmd_migrate_groups)

    backfill = command(
        "backfill-send-times",
        "add the entry by send time of each batch scheduled before session 36, by which the portal's figures and its "
        "search by date find a campaign made before the week it goes out (each a write conditional on its absence); "
        "safe to run again, or while clients send",
    )
    backfill.add_argument("--account", metavar="ID", help="only this account's batches (default: every account's)")
    backfill.add_argument(
        "--dry-run", action="store_true", help="count the batches it would add entries for; write nothing"
    )
    backfill.set_defaults(func=_cmd_backfill_send_times)

    settings = command(
        "set-account",
        "change an account's country, time zone, rate limit, part limit or single sends' order",
        account,
    )
    settings.add_argument("--country", help="default country for local numbers (ISO code, e.g. NG)")
    settings.add_argument("--timezone", help="IANA time zone, e.g. Africa/Lagos")
    settings.add_argument("--rate-limit", type=int, metavar="N", help="messages per second dispatched upstream")
    settings.add_argument("--max-parts", type=int, metavar="N", help="longest message accepted, in parts (1-255)")
    settings.add_argument(
        "--single-sends-in-order",
        metavar="yes|no",
        help="yes (the default): the account's single sends reach the upstream in the order they were accepted, one "
        "after another; no: each goes out alongside the others, in any order (much faster for OTPs)",
    )
    settings.set_defaults(func=_cmd_set_account)


def _add_credential_commands(command: Command, account: argparse.ArgumentParser) -> None:
    issue = command("issue-credential", "issue a new Bearer token or shortcode API key; prints it once", account)
    issue.add_argument("--kind", required=True, choices=["token", "apikey"], help="token (Bearer) or apikey")
    issue.set_defaults(func=_cmd_issue_credential)

    listing = command("list-credentials", "list an account's credentials (prefixes only, never secrets)", account)
    listing.set_defaults(func=_cmd_list_credentials)

    revoke = command("revoke-credential", "revoke one of an account's credentials by its prefix", account)
    revoke.add_argument("--prefix", required=True, help="the credential's prefix, as list-credentials shows it")
    revoke.add_argument("--kind", choices=["token", "apikey"], help="only needed if the prefix is ambiguous")
    revoke.set_defaults(func=_cmd_revoke_credential)

    reset = command(
        "reset-password",
        "set a new /login and portal password (printed once), end every session opened before it, session-key "
        "and portal, and revoke the API credentials made in the portal under the old password (for a leaked password)",
        account,
    )
    reset.add_argument(
        "--keep-portal-credentials",
        action="store_true",
        help="do not revoke the credentials made in the portal under the old password (only when you know the "
        "customer made them and the password did not leak)",
    )
    reset.set_defaults(func=_cmd_reset_password)

    unlock = command(
        "unlock-login",
        "clear the failed-login lock of the account's /login and portal sign-in (from every source), so the "
        "customer can log in again at once; the password and sessions stay, and the limit counts again from zero",
        account,
    )
    unlock.set_defaults(func=_cmd_unlock_login)


def _add_price_commands(command: Command) -> None:
    price = command("set-price", "set the credits per message part of a route (tier and network)")
    price.add_argument("--tier", required=True, type=str.upper, choices=["N", "L", "LL"], help="route tier")
    price.add_argument("--network", default="*", help="network slug (mtn, airtel, glo, 9mobile, ...) or * (default)")
    price.add_argument(
        "--country",
        help="ISO 3166 code (NG, GH, ...): the price holds for the network in that country only; a network slug "
        "names a carrier in many countries (mtn: NG, GH, ZA, ...)",
    )
    price.add_argument("--credits", required=True, type=int, help="credits per part (0 or more)")
    price.set_defaults(func=_cmd_set_price)

    prices = command("show-prices", "show the price table")
    prices.set_defaults(func=_cmd_show_prices)


def _add_route_commands(command: Command) -> None:
    route = command(
        "set-route",
        "route matching messages (by account, network and/or number prefix) to an upstream, with a fallback",
    )
    route.add_argument("--upstream", required=True, metavar="NAME", help="the upstream, as named in Parameter Store")
    route.add_argument("--fallback", metavar="NAME", help="the upstream tried when the first is unavailable")
    route.add_argument("--account", metavar="ID", help="match this account's messages")
    route.add_argument("--network", metavar="SLUG", help="match this network's numbers (mtn, airtel, glo, ...)")
    route.add_argument("--prefix", metavar="DIGITS", help="match numbers starting with these digits (e.g. 234803)")
    route.add_argument(
        "--id", dest="route_id", metavar="ROUTE_ID", help="the route's id (default: made from its match)"
    )
    route.set_defaults(func=_cmd_set_route)

    remove = command("remove-route", "remove a route by its id")
    remove.add_argument("--id", dest="route_id", required=True, metavar="ROUTE_ID", help="as show-routes lists it")
    remove.set_defaults(func=_cmd_remove_route)

    routes = command("show-routes", "show the route table and the default upstream")
    routes.set_defaults(func=_cmd_show_routes)

    pin = command(
        "pin-inbound",
        "before a deploy changing DefaultUpstream: pin the inbound upstreams of the numbers it takes one away from",
    )
    pin.add_argument(
        "--default-upstream", required=True, metavar="NAME", help="the DefaultUpstream the next deploy sets"
    )
    pin.set_defaults(func=_cmd_pin_inbound)


# ---------------------------------------------------------------- opt-outs (docs/opt-outs.md)


def _opt_out_row(record: Any) -> dict[str, Any]:
    return {
        "number": record.msisdn.lstrip("+"),
        "sender": record.sender,
        "keyword": record.keyword,
        "at": record.at,
        "inbound_id": record.inbound_id,
        "carried_over_from": record.carried_over_from,
    }


def list_opt_outs(*, account_id: str) -> list[dict[str, Any]]:
    """The account's opt-outs: each number with the sender it opted out of (`*`: every sender) and how."""
    from sms_gateway.logic import optouts

    store = _store()
    return [_opt_out_row(found) for found in optouts.list_opt_outs(store, store, account_id)]


def opt_out(*, account_id: str, number: str, sender: str | None = None) -> dict[str, Any]:
    """Records an opt-out for the number: of one of the account's senders, or of all of them without one."""
    from sms_gateway.adapters.dynamodb_transactions import TransactionUndecided, not_done
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import optouts

    store = _store()
    try:
        recorded, new = optouts.record_opt_out(store, store, account_id, number, sender, now=utc_now())
    except TransactionUndecided as error:
        # One transaction with the account's counter, which a busy account's sends write all the time.
        raise not_done(f"recording the opt-out of {number} for account {account_id}", error) from error
    return {"account_id": account_id, **_opt_out_row(recorded), "new": new}


def opt_in(*, account_id: str, number: str, sender: str | None = None) -> dict[str, Any]:
    """Removes the number's opt-outs: of one sender (and of every sender, as START does), or all without one."""
    from sms_gateway.adapters.dynamodb_transactions import TransactionUndecided
    from sms_gateway.errors import Unavailable
    from sms_gateway.logic import optouts

    store = _store()
    try:
        msisdn, removed = optouts.remove_opt_out(store, store, account_id, number, sender)
    except TransactionUndecided as error:
        # One transaction per opt-out removed: those before the one that failed are removed, and stay so.
        raise Unavailable(
            f"opting {number} back in for account {account_id}: not finished ({error}); any opt-out removed before "
            "stays removed: run the same command again to remove the rest"
        ) from error
    return {"account_id": account_id, "number": msisdn.lstrip("+"), "sender": sender or "*", "removed": removed}


def _cmd_list_opt_outs(args: argparse.Namespace) -> int:
    def show(rows: list[dict[str, Any]]) -> None:
        if not rows:
            print(f"account {args.account} has no opt-outs")
            return
        _print_rows(rows, ["number", "sender", "keyword", "at", "inbound_id"])

    return _run(args, lambda _: list_opt_outs(account_id=args.account), show=show)


def _cmd_opt_out(args: argparse.Namespace) -> int:
    return _run(args, lambda _: opt_out(account_id=args.account, number=args.number, sender=args.sender))


def _cmd_opt_in(args: argparse.Namespace) -> int:
    return _run(args, lambda _: opt_in(account_id=args.account, number=args.number, sender=args.sender))


def _add_opt_out_commands(command: Command, account: argparse.ArgumentParser) -> None:
    listing = command("opt-outs", "list the numbers that opted out of the account's senders (STOP)", account)
    listing.set_defaults(func=_cmd_list_opt_outs)

    out = command("opt-out", "stop sending to a number: from one sender, or from all of the account's", account)
    out.add_argument("--number", required=True, help="the number, international or in the account's local form")
    out.add_argument("--sender", help="one of the account's senders (default: every sender, as STOPALL)")
    out.set_defaults(func=_cmd_opt_out)

    back = command("opt-in", "send to a number again (as if it had sent START)", account)
    back.add_argument("--number", required=True, help="the number, international or in the account's local form")
    back.add_argument("--sender", help="only this sender's opt-out and a STOPALL (default: every opt-out of it)")
    back.set_defaults(func=_cmd_opt_in)

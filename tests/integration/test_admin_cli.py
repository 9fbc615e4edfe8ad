"""`sms-gateway admin ...` on moto: each command's effect and errors, and what they change for a client's send."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, FakeContext, load_event
from tests.stored_accounts import item_reads_lag, webhook_credentials

API_URL = "http://127.0.0.1:8"


Cli = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def cli(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `sms-gateway admin ...` against the moto stack the `aws` fixture made (not .local/stack.json):
    returns the exit code, stdout (parsed when --json was given) and stderr."""
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "_target", lambda args: API_URL)

    def run(*argv: str) -> tuple[int, Any, str]:
        capsys.readouterr()
        code = cli.main(["admin", *argv])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if "--json" in argv and code == 0 else out), err

    return run


@pytest.fixture
def account(cli: Cli) -> dict[str, Any]:
    code, created, _ = cli("create-account", "--name", "Cinema Club", "--sender", "48974", "--credits", "100", "--json")
    assert code == 0
    return dict(created)


@pytest.fixture
def other(cli: Cli) -> dict[str, Any]:
    code, created, _ = cli("create-account", "--name", "Other Co", "--sender", "OTHERCO", "--json")
    assert code == 0
    return dict(created)


@pytest.fixture
def send(aws: dict[str, str]) -> Callable[..., dict[str, Any]]:
    """POST /ng/v1/sendsms through the real api handler; answers status code and parsed body."""
    spec = importlib.util.spec_from_file_location("fn_api_admin", Path(REPO, "functions", "api", "app.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def post(
        token: str, sender: str = "48974", text: str = "Hello from the cinema", to: str = "2348020000000"
    ) -> dict[str, Any]:
        event = load_event("api-sendsms-9bits.json", YOUR_API_Token=token)
        event["body"] = json.dumps({"from": sender, "to": to, "message": text})
        response = module.handler(event, FakeContext())
        return {"status": response["statusCode"], "body": json.loads(response["body"])}

    return post


def stored_account(account_id: str) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store.get_account(account_id)


def queued(env: dict[str, str]) -> int:
    """The records queued for dispatch, on both dispatch queues (bulk batches and single sends)."""
    import boto3

    return sum(
        int(
            boto3.client("sqs").get_queue_attributes(
                QueueUrl=env[name], AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        for name in ("DISPATCH_QUEUE_URL", "PRIORITY_DISPATCH_QUEUE_URL")
    )


def assert_refused(cli: Cli, argv: list[str], fragment: str) -> None:
    """The command fails with exit code 2, says `fragment` on stderr and prints nothing on stdout."""
    code, out, err = cli(*argv)
    assert (code, out) == (2, ""), argv
    assert fragment in err, (argv, err)


# ---------------------------------------------------------------- help and targets


@pytest.mark.parametrize(
    "command",
    [
        "create-account",
        "issue-credential",
        "list-credentials",
        "revoke-credential",
        "reset-password",
        "add-sender",
        "set-sender",
        "remove-sender",
        "set-price",
        "show-prices",
        "top-up",
        "show-account",
        "set-webhooks",
        "set-account",
        "migrate-groups",
        "backfill-send-times",
    ],
)
def test_every_command_has_help_with_json_and_stack_name(command, capsys):
    from sms_gateway_tools import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["admin", command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text
    assert "--stack-name" in text


def test_a_missing_local_stack_is_a_clear_error(aws, monkeypatch, capsys, tmp_path):
    # Given no .local/stack.json
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "STATE_FILE", tmp_path / "stack.json")
    # When a command runs without --stack-name
    code = cli.main(["admin", "show-prices"])
    # Then it says how to start one, on stderr, with exit code 2
    assert code == 2
    assert "make dev" in capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"env": {"TABLE_NAME": "t"', '{"api_url": "http://127.0.0.1:1"}', "[]"])
def test_an_unreadable_local_stack_state_is_a_clear_error(aws, monkeypatch, capsys, tmp_path, content):
    # Given a .local/stack.json cut short, or without what a command needs
    from sms_gateway_tools import admin, cli

    state = tmp_path / "stack.json"
    state.write_text(content)
    monkeypatch.setattr(admin, "STATE_FILE", state)
    # Then a command says so on stderr, with exit code 2, not a traceback
    assert cli.main(["admin", "show-prices"]) == 2
    assert "make dev" in capsys.readouterr().err


def test_an_unknown_deployed_stack_is_a_clear_error(aws, capsys):
    from sms_gateway_tools import cli

    code = cli.main(["admin", "show-prices", "--stack-name", "no-such-stack"])
    assert code == 2
    assert "no-such-stack" in capsys.readouterr().err


def test_a_deployed_stack_is_looked_up_in_the_region_aws_region_names(aws, monkeypatch):
    import os

    import boto3

    from sms_gateway_tools import admin

    for name in (
        "TABLE_NAME",
        "DISPATCH_QUEUE_URL",
        "PRIORITY_DISPATCH_QUEUE_URL",
        "NOTIFY_QUEUE_URL",
        "WEBHOOK_CREDENTIALS_KEY_ID",
    ):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    for name in ("ALLOW_HTTP_WEBHOOKS", "UPSTREAM_PARAMETER_PREFIX", "DEFAULT_UPSTREAM"):
        monkeypatch.delenv(name, raising=False)
    # Given the operator's stack in eu-west-1, and one of the same name in the profile's default region (us-east-1)
    for region, table in (("eu-west-1", "gateway-table-eu"), ("us-east-1", "gateway-table-us")):
        template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}, "Outputs": {"TableName": {"Value": table}}}
        boto3.client("cloudformation", region_name=region).create_stack(
            StackName="sms-gateway-prod", TemplateBody=json.dumps(template)
        )
    # When the operator names the region with AWS_REGION, as docs/operators.md says (the AWS CLI reads it too)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    admin.use_deployed_stack("sms-gateway-prod")
    # Then the admin commands act on that region's stack: its outputs, and its table, queues, key and parameters
    assert os.environ["TABLE_NAME"] == "gateway-table-eu"
    from sms_gateway.adapters import aws as aws_clients

    aws_clients.reset_clients()
    assert aws_clients.client("dynamodb").meta.region_name == "eu-west-1"
    aws_clients.reset_clients()


@pytest.mark.parametrize("has_priority_queue", [True, False])
def test_a_deployed_stack_s_dispatch_queues_are_read_from_its_outputs(aws, monkeypatch, has_priority_queue):
    import os

    import boto3

    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools import admin

    for name in ("TABLE_NAME", "DISPATCH_QUEUE_URL", "PRIORITY_DISPATCH_QUEUE_URL", "NOTIFY_QUEUE_URL"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    # Given a stack whose outputs name its dispatch queues (one from before the priority queue names one)
    outputs = {"TableName": {"Value": "t"}, "DispatchQueueUrl": {"Value": "https://sqs/q/bulk.fifo"}}
    if has_priority_queue:
        outputs["PriorityDispatchQueueUrl"] = {"Value": "https://sqs/q/priority.fifo"}
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}, "Outputs": outputs}
    boto3.client("cloudformation").create_stack(StackName="sms-gateway-old", TemplateBody=json.dumps(template))
    # When the admin commands point at it
    admin.use_deployed_stack("sms-gateway-old")
    # Then the wiring sends single sends to its priority queue, or to its one dispatch queue when it has none
    queue = gateway().dispatch_queue
    assert queue.queue_url == "https://sqs/q/bulk.fifo"
    assert queue.priority_queue_url == ("https://sqs/q/priority.fifo" if has_priority_queue else queue.queue_url)


# ---------------------------------------------------------------- credentials


def test_an_issued_token_is_shown_once_listed_by_prefix_and_authenticates(cli, account, send):
    # Given an account
    # When the operator issues a second token
    code, issued, err = cli("issue-credential", "--account", account["account_id"], "--kind", "token", "--json")
    # Then its secret is printed once, as a token
    assert code == 0, err
    assert issued["secret"].startswith("sk_")
    assert issued["prefix"] == issued["secret"][:8]
    # And it authenticates a 9bits send
    assert send(issued["secret"])["status"] == 200
    # And the listing shows kind, prefix, created_at and revoked, never a secret
    code, listed, _ = cli("list-credentials", "--account", account["account_id"], "--json")
    assert code == 0
    assert sorted((c["kind"], c["prefix"]) for c in listed) == sorted(
        [("token", account["token"][:8]), ("apikey", account["apikey"][:8]), ("token", issued["prefix"])]
    )
    assert all(set(c) == {"kind", "prefix", "created_at", "created_by", "revoked", "revoked_at"} for c in listed)
    # And who made each: the operator (create-account, issue-credential)
    assert {c["created_by"] for c in listed} == {"operator"}
    assert not any(c["revoked"] for c in listed)
    text = json.dumps(listed)
    assert issued["secret"] not in text
    assert account["token"] not in text


def test_an_issued_apikey_authenticates_the_shortcode_api(cli, account, aws):
    code, issued, _ = cli("issue-credential", "--account", account["account_id"], "--kind", "apikey", "--json")
    assert code == 0
    from sms_gateway.bootstrap import gateway

    assert gateway().store.account_id_for_credential("apikey", issued["secret"]) == account["account_id"]


def test_a_revoked_token_no_longer_authenticates_a_send(cli, account, send, aws):
    # Given an account whose token works
    assert send(account["token"], text="before")["status"] == 200
    # When the operator revokes it by its prefix
    code, revoked, err = cli(
        "revoke-credential", "--account", account["account_id"], "--prefix", account["token"][:8], "--json"
    )
    assert code == 0, err
    assert revoked["revoked"] is True
    assert revoked["kind"] == "token"
    # Then a send with it is refused as the 9bits API refuses bad credentials, and charges nothing
    answer = send(account["token"], text="after")
    assert answer["status"] == 401
    assert "invalid credentials" in answer["body"]["message"]
    assert stored_account(account["account_id"]).credits == 99
    assert queued(aws) == 1
    # And the listing shows it revoked
    _, listed, _ = cli("list-credentials", "--account", account["account_id"], "--json")
    assert [c["revoked"] for c in listed if c["prefix"] == account["token"][:8]] == [True]


def session_key_api(aws: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    from tests.integration.test_send_path import load_function

    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def test_a_reset_password_shuts_out_the_leaked_password_and_every_session_opened_with_it(cli, account, aws):
    """The password travels in the query string of every seed sample's /login, so it can leak. Revoking every token
    and API key left it working, and the sessions opened with it too (24 hours), with no way to change it."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import portal_sessions
    from tests.integration.test_session_key_dialect import log_in, login_event, seed_body, sms_event

    api = session_key_api(aws)
    store = gateway().store
    # Given a session-key session and a portal session opened with the account's password
    stolen = log_in(api, account)
    portal = portal_sessions.sign_in(store, store, account["username"], account["password"], now=utc_now())
    # When the operator resets the password
    code, reset, err = cli("reset-password", "--account", account["account_id"], "--json")
    assert code == 0, err
    assert reset["account_id"] == account["account_id"] and reset["password"] != account["password"]
    # Then the old password opens nothing, and neither session works any more
    assert api(login_event(account["username"], account["password"]))["statusCode"] == 401
    assert api(sms_event(stolen, seed_body(recipient=["+2348020000000"])))["statusCode"] == 401
    assert portal_sessions.signed_in(store, store, portal, now=utc_now()) is None
    # And the new password opens a session that sends
    fresh = log_in(api, {**account, "password": reset["password"]})
    assert api(sms_event(fresh, seed_body(recipient=["+2348020000000"])))["statusCode"] == 201
    # And the new password is shown this once: stored only as a hash
    items = boto3_scan(aws)
    assert not [item for item in items if reset["password"] in json.dumps(item)]


def test_unlock_login_lets_a_locked_out_username_log_in_again_and_the_limit_still_holds_after(cli, account, aws):
    """Anyone who knows a username can lock it out with wrong passwords; the operator had no way to let the customer
    back in before the window ended."""
    from sms_gateway.logic.sessions import MAX_FAILED_LOGINS
    from tests.integration.test_session_key_dialect import login_event

    api = session_key_api(aws)
    wrong, right = login_event(account["username"], "wrong"), login_event(account["username"], account["password"])
    # Given the username locked out by failed logins
    for _ in range(MAX_FAILED_LOGINS):
        assert api(wrong)["statusCode"] == 401
    assert api(right)["statusCode"] == 429
    # When the operator unlocks the account's login
    code, unlocked, err = cli("unlock-login", "--account", account["account_id"], "--json")
    assert code == 0, err
    assert unlocked == {"account_id": account["account_id"], "username": account["username"], "windows_cleared": 1}
    # Then the right password gets in at once
    assert api(right)["statusCode"] == 200
    # And the limit counts again from zero: as many failures lock the username again
    for _ in range(MAX_FAILED_LOGINS):
        assert api(wrong)["statusCode"] == 401
    assert api(right)["statusCode"] == 429


def test_unlock_login_of_a_login_that_is_not_locked_changes_nothing(cli, account, aws):
    from tests.integration.test_session_key_dialect import login_event

    code, out, err = cli("unlock-login", "--account", account["account_id"])
    assert code == 0, err
    assert "windows_cleared  0" in out and "log in again at once" in err
    assert session_key_api(aws)(login_event(account["username"], account["password"]))["statusCode"] == 200


def test_a_reset_password_finds_the_login_of_an_account_created_before_it_was_listed(cli, account, aws):
    import boto3

    # Given an account whose login has no account-side pointer (created before 2026-12-05)
    table = aws["TABLE_NAME"]
    pointer = {"pk": {"S": f"ACC#{account['account_id']}"}, "sk": {"S": "LOGIN"}}
    boto3.client("dynamodb").delete_item(TableName=table, Key=pointer)
    # When the operator resets its password
    code, reset, err = cli("reset-password", "--account", account["account_id"], "--json")
    assert code == 0, err
    # Then the new password logs in, and the pointer is written for the next time
    from sms_gateway.bootstrap import gateway

    login = gateway().store.password_login(account["username"], reset["password"])
    assert login is not None and login.account_id == account["account_id"]
    found = boto3.client("dynamodb").get_item(TableName=table, Key=pointer)["Item"]
    assert found["username"]["S"] == account["username"]


def boto3_scan(aws: dict[str, str]) -> list[dict[str, Any]]:
    import boto3

    return list(boto3.client("dynamodb").scan(TableName=aws["TABLE_NAME"])["Items"])


def test_another_accounts_credential_cannot_be_revoked(cli, account, other, send):
    # Given two accounts
    # When the operator names the other account's token prefix under the first account
    code, out, err = cli("revoke-credential", "--account", account["account_id"], "--prefix", other["token"][:8])
    # Then it is not found, and the other account's token still authenticates
    assert code == 2
    assert out == ""
    assert "no credential with prefix" in err
    from sms_gateway.bootstrap import gateway

    assert gateway().store.account_id_for_credential("token", other["token"]) == other["account_id"]


def test_an_unknown_account_is_a_clear_error_and_creates_nothing(cli, aws):
    import boto3

    # Given no account 404
    # When each account command names it, Then each fails clearly
    for argv in (
        ["issue-credential", "--account", "404", "--kind", "token"],
        ["list-credentials", "--account", "404"],
        ["revoke-credential", "--account", "404", "--prefix", "sk_abcde"],
        ["reset-password", "--account", "404"],
        ["unlock-login", "--account", "404"],
        ["add-sender", "--account", "404", "--sender", "NEWONE"],
        ["remove-sender", "--account", "404", "--sender", "48974"],
        ["top-up", "--account", "404", "--credits", "5"],
        ["show-account", "--account", "404"],
        ["set-webhooks", "--account", "404", "--rotate-token"],
        ["set-account", "--account", "404", "--rate-limit", "5"],
    ):
        assert_refused(cli, [*argv, "--json"], "no account 404")
    # And nothing was written: no item of an account 404, no sender claimed for it
    items = boto3.client("dynamodb").scan(TableName=aws["TABLE_NAME"])["Items"]
    assert not [i for i in items if "404" in i["pk"]["S"] or i.get("account_id", {}).get("S") == "404"]
    assert not [i for i in items if i["pk"]["S"] == "SENDER#NEWONE"]


def test_a_state_change_on_a_missing_account_is_refused_by_the_store_itself(aws):
    # The logic checks first; the conditional writes are what hold when an account vanishes in between.
    from sms_gateway.bootstrap import gateway
    from sms_gateway.errors import NotFound
    from sms_gateway.ports import AccountChanges

    store = gateway().store
    for change in (
        lambda: store.top_up("404", 5),
        lambda: store.update_account("404", AccountChanges(max_parts=3)),
        lambda: store.add_sender("404", "NEWONE"),
        lambda: store.add_credential("404", "token", "sk_orphaned-secret", created_at="2025-01-01T00:00:00Z"),
    ):
        with pytest.raises(NotFound):
            change()
    assert store.get_account("404") is None
    assert store.account_id_for_sender("NEWONE") is None
    assert store.account_id_for_credential("token", "sk_orphaned-secret") is None


# ---------------------------------------------------------------- senders


def test_a_sender_is_added_then_removed(cli, account, other, send):
    # When the operator adds a shortcode to the account
    code, shown, err = cli("add-sender", "--account", account["account_id"], "--sender", "55019", "--json")
    # Then the account lists it and a send from it is accepted
    assert code == 0, err
    assert shown["senders"] == ["48974", "55019"]
    assert send(account["token"], sender="55019")["status"] == 200
    # When it is removed
    code, shown, _ = cli("remove-sender", "--account", account["account_id"], "--sender", "55019", "--json")
    # Then it is gone from the account, a send from it is refused, and another account may take it
    assert code == 0
    assert shown["senders"] == ["48974"]
    assert send(account["token"], sender="55019")["status"] == 400
    code, shown, _ = cli("add-sender", "--account", other["account_id"], "--sender", "55019", "--json")
    assert code == 0
    assert shown["senders"] == ["OTHERCO", "55019"]


def test_a_sender_taken_by_another_account_is_refused_and_changes_nothing(cli, account, other):
    code, out, err = cli("add-sender", "--account", other["account_id"], "--sender", "48974")
    assert code == 2
    assert out == ""
    assert f"registered to account {account['account_id']}" in err
    assert stored_account(other["account_id"]).senders == ("OTHERCO",)
    from sms_gateway.bootstrap import gateway

    assert gateway().store.account_id_for_sender("48974") == account["account_id"]


def test_a_new_account_asking_for_a_taken_sender_is_told_which_sender_and_whose(cli, account):
    # Given an account that owns 48974 (as `make dev`'s demo account does)
    # When the operator creates another account with a free sender and 48974
    code, out, err = cli("create-account", "--name", "Cinema Club", "--sender", "55555", "--sender", "48974")
    # Then it is refused, naming the taken sender and the account it is registered to, as add-sender does
    assert (code, out) == (2, "")
    assert f"error: sender '48974' is registered to account {account['account_id']}" in err
    assert "55555" not in err
    # And nothing was created: 55555 is still free
    from sms_gateway.bootstrap import gateway

    assert gateway().store.account_id_for_sender("55555") is None


def test_a_bad_sender_change_is_refused_and_changes_nothing(cli, account, other):
    assert_refused(cli, ["add-sender", "--account", account["account_id"], "--sender", "WAY-TOO-LONG-ID"], "invalid")
    assert_refused(cli, ["remove-sender", "--account", account["account_id"], "--sender", "OTHERCO"], "not registered")
    assert stored_account(account["account_id"]).senders == ("48974",)
    assert stored_account(other["account_id"]).senders == ("OTHERCO",)


def test_a_numbers_inbound_upstreams_are_set_shown_and_put_back_on_the_routes(cli, account, aws):
    # Given two configured upstreams: the simulator (the default upstream, so the routes') and Kannel
    from tests.integration.test_callback_acknowledgements import configure
    from tests.integration.test_routes_admin import KANNEL

    configure(aws, "kannel", KANNEL)
    account_id = account["account_id"]
    # When nothing is set, the account shows its number taking inbound SMS from its routes' upstreams
    code, shown, _ = cli("show-account", "--account", account_id, "--json")
    assert (shown["inbound_upstreams"], shown["inbound_upstreams_set"]) == ({"48974": ["simulator"]}, [])
    # When the operator binds 48974 to Kannel and the simulator, and adds a number taking only Kannel's
    code, set_to, err = cli(
        "set-sender", "--account", account_id, "--sender", "48974", "--inbound-upstream", "kannel",
        "--inbound-upstream", "simulator", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert set_to == {
        "account_id": account_id,
        "sender": "48974",
        "inbound_upstreams": ["kannel", "simulator"],
        "set": True,
    }
    code, added, err = cli(
        "add-sender", "--account", account_id, "--sender", "55019", "--inbound-upstream", "kannel", "--json"
    )
    assert code == 0, err
    # Then the account shows both as set
    assert added["inbound_upstreams"] == {"48974": ["kannel", "simulator"], "55019": ["kannel"]}
    assert added["inbound_upstreams_set"] == ["48974", "55019"]
    code, text, _ = cli("show-account", "--account", account_id)
    assert "48974: kannel, simulator; 55019: kannel" in text
    # When 48974 is put back on its routes, it shows the routes' upstreams again
    code, set_to, _ = cli("set-sender", "--account", account_id, "--sender", "48974", "--inbound-from-routes", "--json")
    assert (code, set_to["inbound_upstreams"], set_to["set"]) == (0, ["simulator"], False)


def assert_usage_error(cli: Cli, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    """argparse refuses the command line, with its usage line, `fragment` on stderr and exit code 2."""
    with pytest.raises(SystemExit) as exited:
        cli(*argv)
    assert exited.value.code == 2, argv
    assert fragment in capsys.readouterr().err, argv


def test_a_bad_inbound_upstream_is_refused_with_exit_2_and_changes_nothing(cli, account, other, aws, capsys):
    from tests.integration.test_callback_acknowledgements import configure
    from tests.integration.test_routes_admin import KANNEL

    configure(aws, "kannel", KANNEL)
    account_id = account["account_id"]
    set_sender = ["set-sender", "--account", account_id, "--sender", "48974"]
    # A name that is no upstream name, or one no upstream is configured under, is refused
    assert_usage_error(cli, capsys, [*set_sender, "--inbound-upstream", "Kannel!"], "'Kannel!' is not an upstream name")
    assert_refused(
        cli, [*set_sender, "--inbound-upstream", "kannel", "--inbound-upstream", "twilo"], "no upstream named 'twilo'"
    )
    assert_refused(
        cli, ["add-sender", "--account", account_id, "--sender", "55019", "--inbound-upstream", "twilo"], "twilo"
    )
    # ... as are no list at all, a list and --inbound-from-routes together, and another account's number
    assert_usage_error(cli, capsys, set_sender, "one of the arguments --inbound-upstream --inbound-from-routes")
    assert_usage_error(
        cli, capsys, [*set_sender, "--inbound-upstream", "kannel", "--inbound-from-routes"], "not allowed"
    )
    assert_refused(
        cli,
        ["set-sender", "--account", account_id, "--sender", "OTHERCO", "--inbound-upstream", "kannel"],
        "not registered",
    )
    # And nothing changed
    from sms_gateway.bootstrap import gateway

    assert gateway().store.sender_registration("48974").inbound_upstreams is None
    assert gateway().store.sender_registration("OTHERCO").inbound_upstreams is None
    assert gateway().store.sender_registration("55019") is None


# ---------------------------------------------------------------- credits and prices


def test_a_topped_up_balance_allows_a_send(cli, send, aws):
    # Given an account with no credits, whose send is refused
    _, empty, _ = cli("create-account", "--name", "Broke", "--sender", "BROKE", "--json")
    refused = send(empty["token"], sender="BROKE")
    assert refused["status"] == 402
    # When the operator tops it up
    code, topped, err = cli("top-up", "--account", empty["account_id"], "--credits", "5", "--json")
    assert code == 0, err
    assert topped == {
        "account_id": empty["account_id"],
        "added": 5,
        "credits": 5,
        "request_id": topped["request_id"],
        "already_applied": False,
    }
    # Then the same send is accepted and charged
    assert send(empty["token"], sender="BROKE")["status"] == 200
    assert stored_account(empty["account_id"]).credits == 4
    assert queued(aws) == 1


def test_a_top_up_that_is_not_positive_is_refused_and_changes_nothing(cli, account, capsys):
    for credits in ("0", "-5"):
        assert_refused(cli, ["top-up", "--account", account["account_id"], "--credits", credits], "positive")
    # argparse refuses what is not a number, with its own usage line and exit code 2
    with pytest.raises(SystemExit) as exited:
        cli("top-up", "--account", account["account_id"], "--credits", "ten")
    assert exited.value.code == 2
    assert "--credits" in capsys.readouterr().err
    assert stored_account(account["account_id"]).credits == 100


def test_a_top_up_that_added_the_credits_is_not_reported_as_failed_so_a_retry_does_not_double_them(
    cli, account, monkeypatch
):
    from botocore.exceptions import EndpointConnectionError

    from sms_gateway.adapters.dynamodb import DynamoStore

    # Given the read of the balance after the top-up's write fails (the network drops, after botocore's retries)
    real_balance = DynamoStore.balance
    calls = [0]

    def balance_lost_once(self, account_id):
        calls[0] += 1
        if calls[0] == 1:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
        return real_balance(self, account_id)

    monkeypatch.setattr(DynamoStore, "balance", balance_lost_once)
    # When the operator tops the account up, and runs the command again if it says it failed
    code, out, err = cli("top-up", "--account", account["account_id"], "--credits", "50")
    if code != 0:
        cli("top-up", "--account", account["account_id"], "--credits", "50")
    # Then the account got the 50 credits once, and the command said so, with the balance unknown
    assert stored_account(account["account_id"]).credits == 150, (code, err)
    assert code == 0
    assert out.splitlines()[1].split() == ["added", "50"]
    assert "the credits were added; the balance could not be read" in err


@pytest.fixture
def answers_lost(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Any]:
    """Loses the answers of the gateway client's first transactions (DynamoDB applies them: like DynamoDB, a token
    it applied is applied once); botocore's back-offs take no time."""
    from sms_gateway.adapters import aws as clients
    from tests.integration.test_refund_transactions import AnswersLost

    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)
    return lambda times: AnswersLost(clients.client("dynamodb"), times, of="TransactWriteItems")


def test_a_top_up_whose_answer_never_came_can_be_run_again_with_its_request_id_and_adds_once(
    cli, account, answers_lost
):
    # Given a top-up that reaches DynamoDB, whose answers are lost on all of botocore's attempts (the first and its
    # five retries: botocore's max_attempts counts retries)
    answers_lost(6)
    code, _, err = cli("top-up", "--account", account["account_id"], "--credits", "50")
    # Then the command cannot say whether it added the credits, and names the request id to run it again with
    assert code == 2
    assert "may or may not have been added" in err
    request_id = err.split("--request-id ")[1].split()[0]
    # When the operator runs it again with that id
    code, topped, err = cli(
        "top-up", "--account", account["account_id"], "--credits", "50", "--request-id", request_id, "--json"
    )
    # Then it succeeds, says the first run had added them (this one added nothing), and the account has them once
    assert code == 0, err
    assert {key: value for key, value in topped.items() if key != "applied_at"} == {
        "account_id": account["account_id"],
        "added": 0,
        "credits": 150,
        "request_id": request_id,
        "already_applied": True,
        "added_then": 50,
    }
    assert stored_account(account["account_id"]).credits == 150


def test_a_top_up_run_twice_with_one_request_id_adds_once(cli, account, answers_lost):
    answers_lost(0)  # DynamoDB's tokens, none lost
    argv = ("top-up", "--account", account["account_id"], "--credits", "50", "--request-id", "invoice-2291")
    assert cli(*argv)[0] == 0
    assert cli(*argv)[0] == 0
    assert stored_account(account["account_id"]).credits == 150
    # A new id is a new top-up
    assert cli("top-up", "--account", account["account_id"], "--credits", "50", "--request-id", "invoice-2292")[0] == 0
    assert stored_account(account["account_id"]).credits == 200


def test_a_top_up_run_again_under_its_request_id_says_it_was_already_applied_not_added_again(cli, account):
    argv = ("top-up", "--account", account["account_id"], "--credits", "50", "--request-id", "invoice-2291")
    # Given a top-up the operator ran (its answer printed: added 50)
    code, out, _ = cli(*argv)
    assert code == 0
    assert ["added", "50"] in [line.split() for line in out.splitlines()]
    # When the operator runs it again under the same request id (unsure it went through, or by mistake)
    code, out, err = cli(*argv)
    # Then it succeeds (it is done), and says plainly that the id was applied before and nothing was added now: not
    # "added 50" again, which an operator reads as a second top-up
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert ["added", "50"] not in lines
    assert ["added", "0"] in lines
    assert ["added_then", "50"] in lines
    assert "request id invoice-2291 was already applied" in out
    assert "the balance now is 150 credits" in out
    assert stored_account(account["account_id"]).credits == 150
    # And --json says the same for scripts: what this run added (0), what the id's top-up added then, and when
    code, again, _ = cli(*argv, "--json")
    assert code == 0
    assert {key: again[key] for key in ("added", "already_applied", "added_then", "credits")} == {
        "added": 0,
        "already_applied": True,
        "added_then": 50,
        "credits": 150,
    }
    assert again["applied_at"].endswith("Z")


def test_a_top_up_request_id_dynamodb_cannot_take_is_refused_and_changes_nothing(cli, account):
    assert_refused(
        cli, ["top-up", "--account", account["account_id"], "--credits", "5", "--request-id", "a" * 37], "request id"
    )
    assert stored_account(account["account_id"]).credits == 100


def test_a_price_is_set_shown_and_charged(cli, account, send):
    # When the operator prices Airtel on tier N at 3 credits a part
    code, table, err = cli("set-price", "--tier", "n", "--network", "airtel", "--credits", "3", "--json")
    assert code == 0, err
    assert table == {"prices": {"N": {"airtel": 3}}}
    code, table, _ = cli("set-price", "--tier", "N", "--credits", "2", "--json")
    assert table == {"prices": {"N": {"airtel": 3, "*": 2}}}
    # Then show-prices says so
    code, shown, _ = cli("show-prices", "--json")
    assert code == 0
    assert shown == {"prices": {"N": {"airtel": 3, "*": 2}}, "default_per_part": 1}
    code, text, _ = cli("show-prices")
    assert "airtel" in text
    # And a one-part send to an Airtel number (the seed's 0802) costs 3
    assert send(account["token"])["status"] == 200
    assert stored_account(account["account_id"]).credits == 97
    # And Airtel can be priced for one country only, which leaves Nigeria's price as it was
    code, table, err = cli(
        "set-price", "--tier", "N", "--network", "airtel", "--country", "ke", "--credits", "6", "--json"
    )
    assert code == 0, err
    assert table["prices"]["N"] == {"airtel": 3, "*": 2, "airtel@KE": 6}
    assert send(account["token"])["status"] == 200
    assert stored_account(account["account_id"]).credits == 94


def test_a_bad_price_is_refused_and_changes_nothing(cli):
    assert_refused(cli, ["set-price", "--tier", "N", "--network", "nope", "--credits", "1"], "network")
    assert_refused(cli, ["set-price", "--tier", "N", "--credits", "-1"], "negative")
    assert_refused(cli, ["set-price", "--tier", "N", "--country", "Kenya", "--credits", "1"], "ISO 3166")
    assert cli("show-prices", "--json")[1]["prices"] == {}


def test_an_empty_country_is_refused_not_taken_as_every_country(cli):
    # Given MTN priced at 3 a part everywhere
    assert cli("set-price", "--tier", "N", "--network", "mtn", "--credits", "3")[0] == 0
    # When a script prices MTN in one country with the country left empty (--country "$COUNTRY", unset)
    assert_refused(cli, ["set-price", "--tier", "N", "--network", "mtn", "--country", "", "--credits", "7"], "country")
    # Then MTN's price everywhere else is still 3 (as --country Kenya is refused, above)
    assert cli("show-prices", "--json")[1]["prices"] == {"N": {"mtn": 3}}


# ---------------------------------------------------------------- account settings


def test_show_account_has_the_settings_and_no_secret(cli, account):
    code, shown, _ = cli("show-account", "--account", account["account_id"], "--json")
    assert code == 0
    assert shown["credits"] == 100
    assert shown["senders"] == ["48974"]
    assert (shown["default_country"], shown["timezone"]) == ("NG", "Africa/Lagos")
    assert {"rate_limit_per_second", "max_parts", "dlr_url", "inbound_url"} <= set(shown)
    text = json.dumps(shown)
    for secret in ("token", "apikey", "password", "webhook_token"):
        assert account[secret] not in text
    code, text, _ = cli("show-account", "--account", account["account_id"])
    assert "credits" in text
    assert account["webhook_token"] not in text


def test_webhooks_are_set_and_the_token_rotated(cli, account):
    code, shown, err = cli(
        "set-webhooks",
        "--account",
        account["account_id"],
        "--dlr-url",
        "https://client.example/dlr",
        "--inbound-url",
        "http://127.0.0.1:9/inbound",
        "--rotate-token",
        "--json",
    )
    assert code == 0, err
    assert shown["dlr_url"] == "https://client.example/dlr"
    assert shown["inbound_url"] == "http://127.0.0.1:9/inbound"  # the local stack allows http
    stored = stored_account(account["account_id"])
    assert shown["webhook_token"] == webhook_credentials(account["account_id"])[0] != account["webhook_token"]
    # An empty URL removes a webhook; without --rotate-token the token is kept and not shown
    code, shown, _ = cli("set-webhooks", "--account", account["account_id"], "--dlr-url", "", "--json")
    assert code == 0
    assert shown["dlr_url"] is None
    assert "webhook_token" not in shown
    assert stored_account(account["account_id"]).webhook_token == stored.webhook_token


def test_a_bad_webhook_change_is_refused_and_changes_nothing(cli, account, monkeypatch):
    from sms_gateway import bootstrap

    # Given an account, on the local stack (http allowed)
    before = stored_account(account["account_id"])
    hooks = ["set-webhooks", "--account", account["account_id"]]
    # When a URL is not an absolute http(s) URL, or nothing is asked, Then it is refused
    assert_refused(cli, [*hooks, "--dlr-url", "ftp://client.example/dlr", "--rotate-token"], "webhook URL")
    assert_refused(cli, [*hooks, "--inbound-url", "not a url", "--rotate-token"], "webhook URL")
    assert_refused(cli, hooks, "nothing to change")
    # And where the target does not allow http (a deployed stack), http is refused too
    monkeypatch.setenv("ALLOW_HTTP_WEBHOOKS", "false")
    bootstrap.reset()
    assert_refused(cli, [*hooks, "--inbound-url", "http://client.example/in", "--rotate-token"], "https URL")
    # And nothing changed, the webhook token included
    assert stored_account(account["account_id"]) == before


def test_account_settings_change(cli, account):
    code, shown, err = cli(
        "set-account",
        "--account",
        account["account_id"],
        "--country",
        "gh",
        "--timezone",
        "Africa/Accra",
        "--rate-limit",
        "20",
        "--max-parts",
        "4",
        "--json",
    )
    assert code == 0, err
    assert (shown["default_country"], shown["timezone"]) == ("GH", "Africa/Accra")
    assert (shown["rate_limit_per_second"], shown["max_parts"]) == (20, 4)
    assert stored_account(account["account_id"]).max_parts == 4
    # And single sends keep their order until told otherwise, and can be told either way
    assert shown["single_sends_in_order"] is True
    for answer, stored in (("no", False), ("YES", True)):
        code, shown, err = cli(
            "set-account", "--account", account["account_id"], "--single-sends-in-order", answer, "--json"
        )
        assert code == 0, err
        assert shown["single_sends_in_order"] is stored
        assert stored_account(account["account_id"]).single_sends_in_order is stored


def test_a_bad_account_setting_is_refused_and_changes_nothing(cli, account, capsys):
    before = stored_account(account["account_id"])
    settings = ["set-account", "--account", account["account_id"]]
    assert_refused(cli, [*settings, "--timezone", "Africa/Atlantis"], "time zone")
    assert_refused(cli, [*settings, "--country", "XX"], "country")
    assert_refused(cli, [*settings, "--rate-limit", "0"], "rate limit")
    assert_refused(cli, [*settings, "--rate-limit", "-5"], "rate limit must be a positive whole number")
    assert_refused(cli, [*settings, "--max-parts", "-2"], "max parts")
    assert_refused(cli, [*settings, "--country", "GH", "--max-parts", "300"], "at most 255")
    assert_refused(cli, [*settings, "--single-sends-in-order", "maybe"], "takes yes or no, not 'maybe'")
    assert_refused(cli, settings, "nothing to change")
    # argparse refuses a rate limit that is not a whole number, with its own usage line and exit code 2
    with pytest.raises(SystemExit) as exited:
        cli(*settings, "--rate-limit", "0.5")
    assert exited.value.code == 2
    assert "--rate-limit" in capsys.readouterr().err
    assert stored_account(account["account_id"]) == before


def test_create_account_takes_its_country_s_time_zone_or_the_one_given(cli, capsys):
    # Given an account created for a client in Kenya, no --timezone given
    code, created, err = cli(
        "create-account", "--name", "Nairobi Club", "--sender", "NAIROBI", "--country", "KE", "--json"
    )
    assert code == 0, err
    # Then its local times are read in Nairobi's time, not Lagos's, as the command says
    assert stored_account(created["account_id"]).timezone == created["timezone"] == "Africa/Nairobi"
    # And a country of several zones needs --timezone, a bad zone is refused, and neither creates an account
    us = ["create-account", "--name", "Chicago Co", "--sender", "CHICAGO", "--country", "US"]
    assert_refused(cli, us, "several time zones")
    assert_refused(cli, [*us, "--timezone", "America/Atlantis"], "not an IANA time zone")
    code, created, err = cli(*us, "--timezone", "America/Chicago", "--json")
    assert code == 0, err
    assert stored_account(created["account_id"]).timezone == "America/Chicago"
    # And the sender was free until then: the refused commands created nothing
    assert created["senders"] == ["CHICAGO"]
    # And --help says how the zone is chosen
    with pytest.raises(SystemExit):
        cli("create-account", "--help")
    assert "--timezone" in capsys.readouterr().out


def test_create_account_with_more_senders_than_one_write_holds_is_a_clear_error(cli, aws):
    import boto3

    # Given 47 senders for a new account: with its credentials and login, more items than one transaction holds
    many = [f"BULK{number:03d}" for number in range(47)]
    argv = ["create-account", "--name", "Bulk Co", *(arg for sender in many for arg in ("--sender", sender))]
    # When the operator creates it, Then the command says how many it takes and what to do with the rest
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert "at most 46 senders" in err and "add-sender" in err, err
    # And nothing was written: no account, no sender claimed
    items = boto3.client("dynamodb").scan(TableName=aws["TABLE_NAME"])["Items"]
    assert not [item for item in items if item["pk"]["S"].startswith("SENDER#BULK")]
    # And 46, the most it takes, make the account with every one of them
    code, created, err = cli(*argv[:-2], "--json")
    assert code == 0, err
    assert created["senders"] == many[:46]
    assert stored_account(created["account_id"]).senders == tuple(many[:46])


def test_create_account_shows_the_signing_secret_once_by_the_name_rotation_gives_it(cli):
    # When an account is created, with --json and in text
    code, created, err = cli("create-account", "--name", "Signing Co", "--sender", "SIGNCO", "--json")
    assert code == 0, err
    code, text, err = cli("create-account", "--name", "Signing Text Co", "--sender", "SIGNTEXT")
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in text.strip().splitlines())
    # Then the secret that signs its webhooks is `signing_secret`, as set-webhooks --rotate-secret and the API call it
    assert created["signing_secret"] == webhook_credentials(created["account_id"])[1]
    assert lines["signing_secret"].startswith("whsec_")
    # And under that one name only
    assert "webhook_secret" not in created and "webhook_secret" not in lines
    assert created["webhook_token"] == webhook_credentials(created["account_id"])[0]


def test_text_output_is_one_line_per_field(cli, account):
    code, text, _ = cli("top-up", "--account", account["account_id"], "--credits", "7")
    assert code == 0
    lines = dict(line.split(None, 1) for line in text.strip().splitlines())
    assert lines["credits"] == "107"


def test_credentials_written_before_sealing_are_sealed_in_place_and_still_the_same(cli, account, other):
    import boto3

    from sms_gateway.bootstrap import gateway

    table = gateway().store.table_name
    dynamodb = boto3.client("dynamodb")
    # Given an account item as a deployment before sealing wrote it: token and secret as plain strings
    plain_token, plain_secret = "old-token-0123456789abcdef", "whsec_b2xkLXNpZ25pbmctc2VjcmV0LTAxMjM0NTY3"
    dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": f"ACC#{account['account_id']}"}, "sk": {"S": "ACCOUNT"}},
        UpdateExpression="SET webhook_token = :token, webhook_secret = :secret",
        ExpressionAttributeValues={":token": {"S": plain_token}, ":secret": {"S": plain_secret}},
    )
    sealed_other = webhook_credentials(other["account_id"])
    # When the operator seals them in place
    code, report, _ = cli("seal-webhook-credentials", "--json")
    # Then both are sealed, in that one account (the other was sealed at creation and is left as it was)
    assert code == 0
    assert report == {"sealed": 2, "accounts": 1, "changed_meanwhile": 0}
    # And no item of the table holds either in plain text, yet they open to the same secrets: clients change nothing
    items = json.dumps(dynamodb.scan(TableName=table)["Items"])
    assert plain_token not in items and plain_secret not in items
    assert webhook_credentials(account["account_id"]) == (plain_token, plain_secret)
    assert webhook_credentials(other["account_id"]) == sealed_other
    # And running it again seals nothing more
    assert cli("seal-webhook-credentials", "--json")[1] == {"sealed": 0, "accounts": 0, "changed_meanwhile": 0}


def test_a_credential_rotated_while_sealing_runs_keeps_its_rotation(aws, account):
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    current = webhook_credentials(account["account_id"])
    stale = gateway().webhook_credentials.seal(account["account_id"], "webhook_token", "the-plain-token-it-read")
    # When the sealing pass read a plain token that a rotation has replaced since
    assert not store.seal_plain_credential(account["account_id"], "webhook_token", "the-plain-token-it-read", stale)
    # Then the rotated (current) token stays
    assert webhook_credentials(account["account_id"]) == current


# ---------------------------------------------------------------- numbers, senders and countries at the edges


@pytest.mark.parametrize(
    "argv",
    [
        ["create-account", "--name", "Typo Co", "--credits", str(10**40)],
        ["set-account", "--account", "{account}", "--rate-limit", str(10**40)],
    ],
    ids=["create-account --credits", "set-account --rate-limit"],
)
def test_a_huge_number_is_a_one_line_error_with_exit_code_2_not_a_traceback(cli, account, argv):
    argv = [a.replace("{account}", account["account_id"]) for a in argv]
    # docs/operators.md: on bad input every command prints `error: ...` on stderr and exits 2. A number over 38
    # digits fails in boto3 itself (decimal.Rounded, before any request), against real DynamoDB as on moto: it was a
    # traceback, exit 1.
    code, out, err = cli(*argv)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")


def test_an_account_name_that_is_blank_or_too_long_is_refused_clearly_and_creates_nothing(cli):
    from sms_gateway.bootstrap import gateway

    def accounts_stored() -> int:
        table = gateway().store.client.scan(TableName=gateway().store.table_name, Select="COUNT")
        return int(table["Count"])

    before = accounts_stored()
    # A name of spaces only (a shell variable that was empty, quoted) would make an account nobody can tell apart
    assert_refused(cli, ["create-account", "--name", "   ", "--credits", "5"], "account name")
    # A name pasted wrongly (a whole file): it was refused only by DynamoDB, in its words ("Size of hashkey has
    # exceeded the maximum size limit of2048 bytes"), as the login made of it is a key
    assert_refused(cli, ["create-account", "--name", "x" * 5000], "account name")
    assert accounts_stored() == before
    # And the name is stored as typed, without the spaces around it
    code, created, err = cli("create-account", "--name", "  Cinema Club  ", "--json")
    assert code == 0, err
    assert created["name"] == "Cinema Club"
    assert created["username"].startswith("cinema-club-")


def test_the_opening_balance_has_the_same_typo_guard_as_a_top_up(cli, account):
    # An account id pasted into --credits (a realistic slip): top-up refuses it as a typo (over 10**12) ...
    pasted = account["account_id"]
    code, out, err = cli("top-up", "--account", account["account_id"], "--credits", pasted)
    assert code == 2 and "at most" in err
    # ... and so does create-account, for an opening balance
    code, out, err = cli("create-account", "--name", "Typo Co", "--credits", pasted, "--json")
    assert code == 2, f"created with {out['credits'] if code == 0 else out} credits"


def test_a_sender_with_surrounding_spaces_cannot_shadow_another_accounts_shortcode(cli, account, other):
    # Given account A owns shortcode 48974
    # When the operator registers " 48974" (a copy-paste with a space) to account B
    code, _out, _err = cli("add-sender", "--account", other["account_id"], "--sender", " 48974")
    # Then it is refused as 48974 itself is (taken by A), not registered as a look-alike B could send from
    assert code == 2, f"registered: {stored_account(other['account_id']).senders}"
    assert stored_account(other["account_id"]).senders == ("OTHERCO",)


def test_a_sender_pasted_with_a_trailing_space_is_registered_as_the_sender(cli, account, send):
    # When the operator registers "CINEMA " (a paste with a space after it)
    code, _out, err = cli("add-sender", "--account", account["account_id"], "--sender", "CINEMA ")
    # Then the account holds CINEMA itself, and its sends from CINEMA are accepted
    assert code == 0, err
    assert stored_account(account["account_id"]).senders == ("48974", "CINEMA")
    assert send(account["token"], "CINEMA")["status"] == 200


def test_a_sender_id_of_only_spaces_is_refused(cli, account):
    code, _out, err = cli("add-sender", "--account", account["account_id"], "--sender", "   ")
    assert code == 2, f"registered: {stored_account(account['account_id']).senders}"
    assert "invalid" in err


def test_create_account_stores_the_country_it_checked(cli, send):
    # Given a country with a space after it (a script's variable): it is checked, and stored, as NG
    code, created, err = cli(
        "create-account", "--name", "Lagos Co", "--sender", "LAGOSCO", "--credits", "5", "--country", "ng ", "--json"
    )
    assert code == 0, err
    assert stored_account(created["account_id"]).default_country == "NG"
    # And so a local-form number (the account's country) is accepted, as for any NG account
    answer = send(created["token"], "LAGOSCO", to="08020000000")
    assert answer["status"] == 200, answer


def test_adding_a_sender_the_account_holds_in_another_form_changes_nothing(cli, account):
    # docs/operators.md: "adding one the account holds already changes nothing". 48974 is the account's own, and
    # "+48974" is the same registry entry (SENDER#48974): not a sender "registered to account <its own id>"
    code, _out, err = cli("add-sender", "--account", account["account_id"], "--sender", "+48974")
    assert code == 0, err
    assert stored_account(account["account_id"]).senders == ("48974",)


def test_one_sender_given_twice_in_two_forms_is_a_clear_error(cli):
    code, _out, err = cli("create-account", "--name", "Twice Co", "--sender", "55555", "--sender", "+55555")
    assert code == 2
    # Said plainly, not DynamoDB's "Transaction request cannot include multiple operations on one item"
    assert "ValidationException" not in err
    assert "55555" in err


def test_list_sender_requests_of_an_unknown_account_is_an_error_like_the_other_listings(cli):
    code, out, err = cli("list-credentials", "--account", "404")
    assert (code, "no account 404" in err) == (2, True)
    code, out, err = cli("list-sender-requests", "--account", "404")
    assert code == 2, out
    assert "no account 404" in err


def test_a_price_or_rate_limit_past_its_typo_guard_is_refused(cli, account):
    assert_refused(cli, ["set-price", "--tier", "N", "--credits", str(10**6 + 1)], "at most")
    assert_refused(cli, ["set-account", "--account", account["account_id"], "--rate-limit", str(10**6 + 1)], "at most")
    assert stored_account(account["account_id"]).rate_limit_per_second != 10**6 + 1


def test_a_session_opened_with_the_old_password_while_the_reset_is_written_is_ended_too(cli, account, aws, monkeypatch):
    from sms_gateway.adapters import dynamodb
    from tests.integration.test_session_key_dialect import log_in, seed_body, sms_event

    api = session_key_api(aws)
    real_hash = dynamodb.hash_password
    stolen: list[tuple[str, str]] = []

    def hashing_while_the_thief_logs_in(password: str, salt: bytes | None = None) -> str:
        # The reset has taken its `now` and is deriving the new hash (one scrypt): the old one still opens /login.
        stolen.append(log_in(api, account))
        return real_hash(password, salt)

    # Given a thief who keeps logging in with the leaked password
    monkeypatch.setattr(dynamodb, "hash_password", hashing_while_the_thief_logs_in)
    # When the operator resets the password, and a login of the thief's lands while the reset is being written
    code, _, err = cli("reset-password", "--account", account["account_id"], "--json")
    assert code == 0, err
    assert stolen
    # Then the session opened with the old password must be ended like every other one it opened
    assert api(sms_event(stolen[0], seed_body(recipient=["+2348020000000"])))["statusCode"] == 401


def test_a_login_with_the_old_password_right_after_the_reset_is_refused_even_from_a_replica_that_lags(
    cli, account, aws, monkeypatch
):
    """The login's password read was eventually consistent: a login right after reset-password could still read the
    old hash from a replica and open a session that lived 24 hours, since it was opened after the reset's time."""
    from tests.integration.test_session_key_dialect import login_event

    api = session_key_api(aws)
    # And eventually consistent reads of its login answering from a replica that will not have seen the reset
    item_reads_lag(monkeypatch, {"pk": {"S": f"LOGIN#{account['username']}"}, "sk": {"S": "LOGIN"}})
    # When the operator resets the password
    code, _, err = cli("reset-password", "--account", account["account_id"], "--json")
    assert code == 0, err
    # And a login with the leaked password right after it is read from that replica
    answer = api(login_event(account["username"], account["password"]))
    # Then the leaked password opens nothing: the login reads the password strongly consistent, and gets the 401 of
    # any wrong password (a session it opened from the old hash would carry the old password's epoch: ended too)
    assert answer["statusCode"] == 401, answer


def conflicting_admin_writes(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """DynamoDB cancelling the next `times` transactions on a conflict with a concurrent write of the account item
    (a send's or a refund's credits: an account that is sending), as it does on AWS (moto never does): no condition
    failed."""
    from tests.integration.test_optouts import conflicting_transactions

    conflicting_transactions(monkeypatch, times)


def test_a_revoke_that_meets_a_concurrent_send_revokes_the_token_or_says_to_try_again(cli, account, send, monkeypatch):
    # Given a leaked token of an account that is sending: DynamoDB cancels the revoke's transaction once on a
    # conflict with a send's write of the account item (no condition failed)
    prefix = account["token"][:8]
    conflicting_admin_writes(monkeypatch, 1)
    # When the operator revokes it
    code, _, err = cli("revoke-credential", "--account", account["account_id"], "--prefix", prefix)
    # Then the token is revoked (the store's other transactions retry a conflict), not refused with "account ... has
    # no token starting 'sk_...'" (exit 2) while the token goes on sending: the operator reads that the prefix is
    # wrong, and list-credentials shows that very prefix, not revoked
    assert "has no token" not in err
    assert code == 0, err
    assert send(account["token"])["status"] == 401


def test_an_add_sender_that_meets_a_concurrent_send_is_not_called_taken_by_another_account(cli, account, monkeypatch):
    conflicting_admin_writes(monkeypatch, 1)
    code, _, err = cli("add-sender", "--account", account["account_id"], "--sender", "55019")
    # Not "error: sender '55019' is registered to account another account": no account holds it
    assert "registered to account" not in err
    assert code == 0, err


def test_admin_writes_that_conflict_past_the_retries_say_to_try_again_and_change_nothing(
    cli, account, send, monkeypatch
):
    from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS

    account_id, prefix = account["account_id"], account["token"][:8]
    # Given an account so busy that every attempt of a transaction on it conflicts with a send's write
    conflicting_admin_writes(monkeypatch, 10 * MAX_TRANSACTION_ATTEMPTS)
    # When the operator revokes a token, adds a sender, resets the password, issues a credential and tops it up
    for argv in (
        ["revoke-credential", "--account", account_id, "--prefix", prefix],
        ["add-sender", "--account", account_id, "--sender", "55019"],
        ["reset-password", "--account", account_id],
        ["issue-credential", "--account", account_id, "--kind", "apikey"],
        ["top-up", "--account", account_id, "--credits", "50"],
    ):
        code, out, err = cli(*argv)
        # Then each says it was not done and to try again (exit 2, no traceback), not that the token, the account or
        # the sender is someone else's or missing
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and "nothing changed" in err and "try again" in err, (argv, err)
        assert "Traceback" not in err and "registered to account" not in err and "has no" not in err
    # And nothing changed: the token still sends, no sender was added, no credits were added
    monkeypatch.undo()
    assert send(account["token"])["status"] == 200
    stored = stored_account(account_id)
    assert "55019" not in stored.senders
    assert stored.credits == 100 - 1


def test_opt_out_and_opt_in_that_conflict_past_the_retries_say_to_try_again_and_change_nothing(
    cli, account, monkeypatch
):
    from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS
    from sms_gateway.bootstrap import gateway

    account_id = account["account_id"]
    assert cli("opt-out", "--account", account_id, "--number", "2348020000001")[0] == 0
    monkeypatch.setattr("sms_gateway.adapters.dynamodb_transactions.back_off", lambda attempt: None)
    # Given an account so busy that every attempt of a transaction on it conflicts with a send's write
    conflicting_admin_writes(monkeypatch, 10 * MAX_TRANSACTION_ATTEMPTS)
    # When the operator records a customer's opt-out asked for by phone, and takes another number's back
    for argv in (
        ["opt-out", "--account", account_id, "--number", "2348020000002"],
        ["opt-in", "--account", account_id, "--number", "2348020000001"],
    ):
        code, out, err = cli(*argv)
        # Then each says it was not done and to run it again (exit 2), as the other admin writes do: no traceback
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and "not " in err and "again" in err, (argv, err)
    # And nothing changed: the first number is still opted out, the second not
    monkeypatch.undo()
    opted = {o.msisdn for o in gateway().store.list_opt_outs(account_id)}
    assert opted == {"+2348020000001"}


# ---------------------------------------------------------------- migrate-groups


def group_views(account_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The account's groups as the API reads them (each by id, all its members; version aside, which no answer shows)
    and as its list pages them."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    store = gateway().store
    listed, _ = groups.list_groups(store, account_id, limit=100, cursor=None)
    read = {g.group_id: groups.get_group(store, account_id, g.group_id).model_dump(exclude={"version"}) for g in listed}
    return read, [g.model_dump() for g in listed]


def held_in_summaries(*account_ids: str) -> list[str]:
    """The groups whose summary item still holds members (the layout before 2026-12-06)."""
    from tests.integration.test_batches_dialect import group_items

    return sorted(
        f"grp_{int(sk.removeprefix('GROUP#'))}"
        for account_id in account_ids
        for sk, item in group_items(account_id).items()
        if sk.startswith("GROUP#") and "members" in item
    )


def new_group(account_id: str, members: list[str]) -> str:
    from datetime import UTC, datetime

    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups

    made = groups.create_group(
        gateway().store, account_id=account_id, default_country="NG", name="New", members=members, now=datetime.now(UTC)
    )
    return made.group.group_id


def test_migrate_groups_moves_every_old_layout_group_and_each_reads_and_lists_the_same(cli, account, other):
    from tests.integration.test_batches_dialect import (
        AIRTEL,
        GLO,
        MTN,
        add_as_the_previous_build_did,
        store_group_in_the_old_layout,
    )

    mine, theirs = account["account_id"], other["account_id"]
    # Given groups stored before 2026-12-06 (members in the summary) in two accounts, one changed by the previous
    # build after a roll back (members in both items), and one in the new layout
    old = store_group_in_the_old_layout(mine, [AIRTEL, MTN])
    store_group_in_the_old_layout(theirs, [GLO])
    rolled = new_group(mine, [AIRTEL])
    add_as_the_previous_build_did(mine, rolled, MTN, version=1, count=2)
    new_group(theirs, [MTN])
    before = {account_id: group_views(account_id) for account_id in (mine, theirs)}
    assert len(held_in_summaries(mine, theirs)) == 3
    # When the operator migrates them
    code, report, err = cli("migrate-groups", "--json")
    # Then the three are moved and the new one is counted as such
    assert code == 0, err
    assert report == {"moved": 3, "already_new": 1, "failed": 0, "dry_run": False}
    assert held_in_summaries(mine, theirs) == []
    # And every group reads and lists as it did: same members, counts, names and times
    assert {account_id: group_views(account_id) for account_id in (mine, theirs)} == before
    assert before[mine][0][old]["members"] == (f"+{AIRTEL}", f"+{MTN}")
    assert before[mine][0][rolled]["members"] == (f"+{AIRTEL}", f"+{MTN}")
    # And the progress went to stderr, one line per group moved
    assert err.count("moved grp_") == 3, err
    # When it is run again
    code, report, _ = cli("migrate-groups", "--json")
    # Then it moves nothing
    assert (code, report) == (0, {"moved": 0, "already_new": 4, "failed": 0, "dry_run": False})


def test_migrate_groups_of_one_account_and_its_dry_run(cli, account, other, aws):
    from tests.integration.test_batches_dialect import AIRTEL, GLO, store_group_in_the_old_layout

    mine, theirs = account["account_id"], other["account_id"]
    old = store_group_in_the_old_layout(mine, [AIRTEL])
    store_group_in_the_old_layout(theirs, [GLO])
    new_group(mine, [GLO])
    table = boto3_scan(aws)
    # When the operator asks what it would move
    code, report, err = cli("migrate-groups", "--dry-run", "--json")
    # Then it counts the old groups of every account and writes nothing
    assert (code, report) == (0, {"moved": 2, "already_new": 1, "failed": 0, "dry_run": True}), err
    assert boto3_scan(aws) == table
    code, text, _ = cli("migrate-groups", "--dry-run", "--account", mine)
    assert code == 0 and "would move" in text, text
    assert boto3_scan(aws) == table
    # When it migrates one account
    code, report, err = cli("migrate-groups", "--account", mine, "--json")
    # Then only that account's group is moved
    assert (code, report) == (0, {"moved": 1, "already_new": 1, "failed": 0, "dry_run": False}), err
    assert held_in_summaries(mine) == []
    assert len(held_in_summaries(theirs)) == 1
    assert old not in held_in_summaries(mine, theirs)


def test_migrate_groups_of_an_unknown_account_is_a_clear_error(cli):
    assert_refused(cli, ["migrate-groups", "--account", "123"], "no account")


@pytest.mark.parametrize("by", ["this build", "the previous build"])
def test_a_member_change_between_the_migration_s_read_and_its_write_is_kept(cli, account, monkeypatch, by):
    from datetime import UTC, datetime

    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups
    from tests.integration.test_batches_dialect import (
        AIRTEL,
        GLO,
        MTN,
        add_as_the_previous_build_did,
        changed_between_reads,
        store_group_in_the_old_layout,
    )

    account_id = account["account_id"]
    group_id = store_group_in_the_old_layout(account_id, [AIRTEL, MTN])

    def change() -> None:
        if by == "this build":
            groups.add_members(
                gateway().store,
                account_id=account_id,
                default_country="NG",
                group_id=group_id,
                members=[GLO],
                now=datetime.now(UTC),
            )
        else:  # a container of the build before, still serving while this one is deployed, or after a roll back
            add_as_the_previous_build_did(account_id, group_id, GLO, version=1, count=3)

    # Given a member change landing after the migration read the group and before it wrote it
    changed_between_reads(monkeypatch, change, 1)
    code, report, err = cli("migrate-groups", "--json")
    # Then the migration's write loses the condition: it reads the group again and moves it, or finds it moved
    assert code == 0, err
    moved = 1 if by == "the previous build" else 0
    assert report == {"moved": moved, "already_new": 1 - moved, "failed": 0, "dry_run": False}
    # And the group holds the member that change added, in the new layout
    monkeypatch.undo()
    read = groups.get_group(gateway().store, account_id, group_id)
    assert (read.members, read.member_count) == ((f"+{AIRTEL}", f"+{MTN}", f"+{GLO}"), 3)
    assert held_in_summaries(account_id) == []


def test_a_group_whose_move_conflicts_past_the_retries_is_failed_and_moved_by_the_next_run(cli, account, monkeypatch):
    from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_batches_dialect import AIRTEL, GLO, MTN, store_group_in_the_old_layout
    from tests.integration.test_optouts import conflicting_transactions

    account_id = account["account_id"]
    busy = store_group_in_the_old_layout(account_id, [AIRTEL, MTN])
    quiet = store_group_in_the_old_layout(account_id, [GLO])
    number = f"{int(busy.removeprefix('grp_')):019d}"
    before = group_views(account_id)

    def on_busy(request: dict[str, Any]) -> bool:
        return number in json.dumps(request["TransactItems"])

    client = gateway().store.client
    transact = client.transact_write_items
    # Given DynamoDB cancelling every attempt of one group's move on conflicts (a group changed that often)
    conflicting_transactions(monkeypatch, 10 * MAX_TRANSACTION_ATTEMPTS, on_busy)
    code, out, err = cli("migrate-groups", "--json")
    # Then that group is failed, named, and the run exits 1 (its report still printed); the other is moved
    assert code == 1, err
    assert json.loads(out) == {"moved": 1, "already_new": 0, "failed": 1, "dry_run": False}
    assert f"failed {busy}" in err and "Traceback" not in err, err
    assert held_in_summaries(account_id) == [busy]
    assert group_views(account_id) == before
    # When it is run again, the conflicts over
    monkeypatch.setattr(client, "transact_write_items", transact)
    code, report, err = cli("migrate-groups", "--json")
    # Then it moves only the group left
    assert (code, report) == (0, {"moved": 1, "already_new": 1, "failed": 0, "dry_run": False}), err
    assert held_in_summaries(account_id) == []
    assert group_views(account_id) == before
    assert quiet not in held_in_summaries(account_id)


def test_a_group_whose_move_meets_one_conflict_is_moved(cli, account, monkeypatch):
    from tests.integration.test_batches_dialect import AIRTEL, store_group_in_the_old_layout
    from tests.integration.test_optouts import conflicting_transactions

    group_id = store_group_in_the_old_layout(account["account_id"], [AIRTEL])
    conflicting_transactions(monkeypatch, 1)
    code, report, err = cli("migrate-groups", "--json")
    assert (code, report) == (0, {"moved": 1, "already_new": 0, "failed": 0, "dry_run": False}), err
    assert group_id not in held_in_summaries(account["account_id"])


def test_a_group_deleted_while_the_migration_moves_it_stays_deleted(cli, account, monkeypatch):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import groups
    from tests.integration.test_batches_dialect import (
        AIRTEL,
        changed_between_reads,
        group_items,
        store_group_in_the_old_layout,
    )

    account_id = account["account_id"]
    group_id = store_group_in_the_old_layout(account_id, [AIRTEL])
    # Given the group deleted after the migration read it and before it wrote it
    changed_between_reads(monkeypatch, lambda: groups.delete_group(gateway().store, account_id, group_id), 1)
    code, out, err = cli("migrate-groups")
    # Then it counts nowhere, and no members item is left behind for it
    assert code == 0, err
    assert out.split() == ["moved", "0", "already_new", "0", "failed", "0", "dry_run", "no"], out
    assert group_items(account_id) == {}


def test_a_group_whose_move_is_throttled_past_botocore_s_retries_is_failed_and_the_run_goes_on(
    cli, account, monkeypatch
):
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway
    from tests.integration.test_batches_dialect import AIRTEL, GLO, store_group_in_the_old_layout

    account_id = account["account_id"]
    throttled = store_group_in_the_old_layout(account_id, [AIRTEL])
    store_group_in_the_old_layout(account_id, [GLO])
    client = gateway().store.client
    read = client.get_item
    number = f"{int(throttled.removeprefix('grp_')):019d}"

    def get_item(**request: Any) -> Any:
        if request["Key"]["sk"]["S"].endswith(number):
            error = {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeds"}
            raise ClientError({"Error": error}, "GetItem")
        return read(**request)

    # Given DynamoDB throttling the reads of one group (botocore's retries spent)
    monkeypatch.setattr(client, "get_item", get_item)
    code, out, err = cli("migrate-groups", "--json")
    # Then that group is failed and named, the other moved, exit 1
    assert code == 1, err
    assert json.loads(out) == {"moved": 1, "already_new": 0, "failed": 1, "dry_run": False}
    assert f"failed {throttled}" in err and "Traceback" not in err, err
    assert held_in_summaries(account_id) == [throttled]


def test_a_reset_for_a_leak_revokes_what_the_portal_made_under_the_old_password_all_or_nothing(
    cli, account, send, aws, monkeypatch
):
    """Whoever holds a leaked password signs in to the portal and makes API credentials there (they never expire)
    and points the webhooks at their server: reset-password revokes those credentials in its own transaction, and
    shows the operator whose account it is, what it revoked, what it cannot place and the webhooks to check."""
    import boto3

    from sms_gateway.adapters.dynamodb_transactions import MAX_TRANSACTION_ATTEMPTS
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    account_id, store = account["account_id"], gateway().store
    # Given a token made in the portal under the leaked password, and the DLR URL changed there
    thief = accounts.issue_credential(store, account_id, "token", now=utc_now(), in_portal_under="")
    wiring = gateway()
    accounts.set_webhooks(
        store, wiring.webhook_credentials, account_id, dlr_url="https://thief.example/dlr", by="portal"
    )
    # And an API key from before credentials recorded their origin
    old = accounts.issue_credential(store, account_id, "apikey", now=utc_now())
    boto3.client("dynamodb").update_item(
        TableName=aws["TABLE_NAME"],
        Key={"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": f"CRED#apikey#{old.prefix}"}},
        UpdateExpression="REMOVE created_by",
    )
    # When the reset meets conflicts past its retries, it says so and nothing is half done: the password and the
    # thief's token both still work
    conflicting_admin_writes(monkeypatch, MAX_TRANSACTION_ATTEMPTS)
    code, _, err = cli("reset-password", "--account", account_id)
    assert code == 2 and "nothing changed" in err, err
    assert send(thief.secret)["status"] == 200
    assert store.password_login(account["username"], account["password"]) is not None
    # When the operator resets it
    code, out, err = cli("reset-password", "--account", account_id)
    assert code == 0, err
    # Then the thief's token sends nothing, the operator's token still sends
    assert send(thief.secret)["status"] == 401
    assert send(account["token"])["status"] == 200
    # And the answer names the username, the token revoked, the key of unknown origin and the webhook to check
    assert account["username"] in out
    revoked, unknown = out.split("\nrevoked: ", 1)[1].split("\nactive, origin unknown", 1)
    assert thief.prefix in revoked and old.prefix not in revoked
    assert old.prefix in unknown and thief.prefix not in unknown
    assert "https://thief.example/dlr" in out and "webhooks_changed_by" in out
    assert "check dlr_url and inbound_url" in err


def test_review_a_reset_for_a_leak_goes_through_however_many_credentials_the_portal_made(cli, account, send, aws):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts

    account_id, store = account["account_id"], gateway().store
    # Given a thief who signed in to the portal with the leaked password and made 49 tokens there (a loop of
    # create-credential forms: the portal sets no limit)
    made = [accounts.issue_credential(store, account_id, "token", now=utc_now(), in_portal_under="") for _ in range(49)]
    # When the operator resets the password for the leak
    code, reset, err = cli("reset-password", "--account", account_id, "--json")
    # Then the reset is done: the old password no longer works, and every token the thief made is revoked
    assert code == 0, err
    assert {c["prefix"] for c in reset["revoked"]} == {c.prefix for c in made} and reset["not_revoked"] == []
    assert store.password_login(account["username"], account["password"]) is None
    assert send(made[0].secret)["status"] == 401 and send(made[-1].secret)["status"] == 401


def test_review_a_reset_flags_webhooks_changed_with_a_token_the_portal_made(cli, account, aws):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.logic import accounts
    from tests.conftest import load_function
    from tests.integration.test_batches_dialect import request

    account_id, store = account["account_id"], gateway().store
    module = load_function("api")
    # Given a thief who made a Bearer token in the portal with the leaked password, and with it pointed the DLR
    # webhook at their server through PUT /ng/v1/settings/webhooks (the 9bits API takes any token of the account)
    thief = accounts.issue_credential(store, account_id, "token", now=utc_now(), in_portal_under="")
    event = request(thief.secret, "PUT", "/ng/v1/settings/webhooks", {"dlr_url": "https://thief.example/dlr"})
    assert module.handler(event, FakeContext())["statusCode"] == 200
    # When the operator resets the password for the leak
    code, reset, err = cli("reset-password", "--account", account_id, "--json")
    assert code == 0, err
    assert reset["dlr_url"] == "https://thief.example/dlr"
    # Then the answer says the webhooks were changed since the leak (docs/operators.md: "if that is after the
    # password may have leaked, confirm the URLs with the client and rotate both"), as it does for the portal's form
    assert reset["webhooks_changed_at"] is not None
    assert reset["webhooks_changed_by"] == f"token {thief.prefix}, made by portal"


def test_a_top_up_run_again_with_its_request_id_on_the_local_stack_s_moto_adds_once(cli, account):
    # Given the local stack's moto as `make dev` runs it (the aws fixture patches it as the local stack does), with
    # no stand-in for DynamoDB's ClientRequestToken (test_a_top_up_run_twice_with_one_request_id_adds_once has one)
    argv = ("top-up", "--account", account["account_id"], "--credits", "50", "--request-id", "invoice-2291")
    # When the operator runs a top-up, then the same top-up again, as docs/operators.md says is safe within 10 min
    assert cli(*argv)[0] == 0
    assert cli(*argv)[0] == 0
    # Then the account got the 50 credits once
    assert stored_account(account["account_id"]).credits == 150
    # And the same id with other credits is refused, nothing added (docs/operators.md, "top-up")
    code, _, err = cli("top-up", "--account", account["account_id"], "--credits", "40", "--request-id", "invoice-2291")
    assert code == 2
    assert "was used for another top-up" in err
    assert stored_account(account["account_id"]).credits == 150


def _documented_output(command: str) -> list[str]:
    """The lines of the example output docs/operators.md shows after the commands block of `command`."""
    doc = (REPO / "docs" / "operators.md").read_text()
    after = doc.split(f"\nsms-gateway admin {command} ", 1)[1].split("```\n", 1)[1]
    return after.split("\n```\n", 1)[1].split("```", 1)[0].strip("\n").splitlines()


def test_review_the_outputs_docs_operators_md_shows_have_the_columns_and_labels_the_commands_print(
    cli: Cli, account: dict[str, Any]
) -> None:
    # Given an account with a credential issued besides the ones it was created with
    assert cli("issue-credential", "--account", account["account_id"], "--kind", "token")[0] == 0
    # When an operator lists its credentials and shows the account, as docs/operators.md shows them
    code, credentials, _ = cli("list-credentials", "--account", account["account_id"])
    assert code == 0
    code, shown, _ = cli("show-account", "--account", account["account_id"])
    assert code == 0
    # Then the documented table has the columns printed, in their order, and the account the labels printed
    assert _documented_output("list-credentials")[0].split() == credentials.splitlines()[0].split()
    documented_labels = [line.split()[0] for line in _documented_output("show-account")]
    assert documented_labels == [line.split()[0] for line in shown.splitlines() if line.strip()]

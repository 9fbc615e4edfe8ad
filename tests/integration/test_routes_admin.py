"""The route table on moto: the store's versioned item, and the admin's set-route, remove-route and show-routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sms_gateway.domain.routing import Route, RouteChoice
from sms_gateway.errors import Conflict, NotFound

API_URL = "http://127.0.0.1:8"

Cli = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def store(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store


@pytest.fixture
def account_id(aws: dict[str, str]) -> str:
    from sms_gateway_tools import admin

    return str(admin.create_account(name="Cinema Club", senders=[], credits=0)["account_id"])


# A Kannel configured as docs/providers-smsc.md says: the dispatcher can build it and submit to it.
KANNEL = {
    "type": "kannel",
    "url": "http://127.0.0.1:13013",
    "username": "gateway",
    "password": "secret",
    "callback_token": "kannel-callback-token-0123",
}


def configure_upstream(env: dict[str, str], name: str, prefix: str | None = None, config: Any = None) -> None:
    """Registers an upstream where the provider registry (and set-route) looks for it (`config`: a JSON value, or
    a text stored as it is; by default a complete Kannel)."""
    import boto3

    value = config if isinstance(config, str) else json.dumps(KANNEL if config is None else config)
    boto3.client("ssm").put_parameter(
        Name=f"{prefix or env['UPSTREAM_PARAMETER_PREFIX']}{name}", Type="SecureString", Value=value, Overwrite=True
    )


@pytest.fixture
def upstreams(aws: dict[str, str]) -> None:
    # `simulator` is configured by the aws fixture already.
    configure_upstream(aws, "kannel")
    configure_upstream(aws, "jasmin")


def routes_item(env: dict[str, str]) -> dict[str, Any] | None:
    import boto3

    key = {"pk": {"S": "CONFIG"}, "sk": {"S": "ROUTES"}}
    found: dict[str, Any] | None = boto3.client("dynamodb").get_item(TableName=env["TABLE_NAME"], Key=key).get("Item")
    return found


def mtn(upstream: str = "kannel", fallback: str | None = "jasmin", route_id: str = "mtn") -> Route:
    return Route(route_id=route_id, network="mtn", upstream=upstream, fallback=fallback)


# ---------------------------------------------------------------- the store


def test_routes_round_trip_through_one_versioned_item(aws, store, account_id):
    # Given no route table yet
    empty = store.route_table("simulator")
    assert (empty.routes, empty.version, empty.default_upstream) == ((), 0, "simulator")
    assert routes_item(aws) is None
    # When an operator adds a network route, then an account route
    assert store.put_route(mtn(), 0) == 1
    mine = Route(route_id="mine", account_id=account_id, prefix="234803", upstream="simulator")
    assert store.put_route(mine, 1) == 2
    # Then both come back, with the version, and route messages
    table = store.route_table("simulator")
    assert (table.routes, table.version) == ((mtn(), mine), 2)
    assert table.choose("1", "mtn", "+2348021234567") == RouteChoice(
        primary="kannel", fallback="jasmin", route_id="mtn"
    )
    assert table.choose(account_id, "mtn", "+2348031234567") == RouteChoice(primary="simulator", route_id="mine")
    # And the item holds plain maps, without empty match fields
    item = routes_item(aws)
    assert item is not None
    assert item["version"] == {"N": "2"}
    assert item["routes"]["L"][0]["M"] == {
        "route_id": {"S": "mtn"},
        "network": {"S": "mtn"},
        "upstream": {"S": "kannel"},
        "fallback": {"S": "jasmin"},
    }
    # When both are removed
    assert store.remove_route("mtn", 2) == 3
    assert store.remove_route("mine", 3) == 4
    # Then the table is empty but keeps its version, so a stale editor still meets a conflict
    assert (store.route_table("simulator").routes, store.route_table("simulator").version) == ((), 4)


def test_a_route_of_the_same_id_replaces_the_old_one(store):
    store.put_route(mtn(), 0)
    assert store.put_route(mtn(upstream="simulator", fallback=None), 1) == 2
    assert store.route_table("simulator").routes == (mtn(upstream="simulator", fallback=None),)


def test_an_edit_from_a_stale_version_is_a_conflict_and_changes_nothing(aws, store):
    # Given a table another operator has edited since we read it (version 0)
    store.put_route(mtn(), 0)
    before = routes_item(aws)
    # When we add or remove a route from version 0
    # Then it is a clear conflict, and the table is as the other operator left it
    with pytest.raises(Conflict, match=r"changed since it was read \(version 0, now 1\)"):
        store.put_route(Route(route_id="glo", network="glo", upstream="simulator"), 0)
    with pytest.raises(Conflict, match="changed since it was read"):
        store.remove_route("mtn", 0)
    assert routes_item(aws) == before


@pytest.mark.parametrize("with_account", [False, True])
def test_an_edit_racing_another_is_refused_by_the_conditional_write(aws, store, account_id, monkeypatch, with_account):
    # Given we read the table at version 0, and another edit lands before our write
    from sms_gateway.domain.routing import Routes

    store.put_route(mtn(), 0)
    before = routes_item(aws)
    monkeypatch.setattr(store, "_stored_routes", Routes)
    route = Route(route_id="glo", network="glo", account_id=account_id if with_account else None, upstream="simulator")
    # When we write from version 0 (put_item, or the transaction that checks the account)
    # Then the write's condition refuses it
    with pytest.raises(Conflict, match="changed since it was read"):
        store.put_route(route, 0)
    assert routes_item(aws) == before


def test_a_route_for_an_unknown_account_is_refused(aws, store):
    with pytest.raises(NotFound, match="no account 404404"):
        store.put_route(Route(route_id="typo", account_id="404404", upstream="kannel"), 0)
    assert routes_item(aws) is None


def test_a_second_route_with_the_same_match_is_a_conflict(aws, store):
    store.put_route(mtn(), 0)
    before = routes_item(aws)
    with pytest.raises(Conflict, match="route 'mtn' already matches network=mtn"):
        store.put_route(mtn(route_id="other"), 1)
    assert routes_item(aws) == before


def test_removing_an_unknown_route_is_not_found(aws, store):
    store.put_route(mtn(), 0)
    with pytest.raises(NotFound, match="no route 'nope'"):
        store.remove_route("nope", 1)
    assert store.route_table("simulator").version == 1


# ---------------------------------------------------------------- the admin commands


@pytest.fixture
def cli(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `sms-gateway admin ...` against the moto stack the `aws` fixture made: returns the exit code, stdout
    (parsed when --json was given and it succeeded) and stderr."""
    from sms_gateway_tools import admin, cli

    monkeypatch.setattr(admin, "_target", lambda args: API_URL)

    def run(*argv: str) -> tuple[int, Any, str]:
        capsys.readouterr()
        code = cli.main(["admin", *argv])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if "--json" in argv and code == 0 else out), err

    return run


def shown(cli: Cli) -> dict[str, Any]:
    code, table, err = cli("show-routes", "--json")
    assert code == 0, err
    return dict(table)


@pytest.mark.parametrize("command", ["set-route", "remove-route", "show-routes", "pin-inbound"])
def test_every_route_command_has_help_with_json_and_stack_name(command, capsys):
    from sms_gateway_tools import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["admin", command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text
    assert "--stack-name" in text


def test_an_operator_sets_shows_and_removes_routes(cli, upstreams, account_id):
    # Given no routes
    assert shown(cli) == {"default_upstream": "simulator", "version": 0, "routes": []}
    # When the operator routes MTN numbers to kannel (jasmin as fallback) and one account's 234803 range to jasmin
    code, table, err = cli("set-route", "--network", "MTN", "--upstream", "kannel", "--fallback", "jasmin", "--json")
    assert code == 0, err
    code, table, err = cli(
        "set-route",
        "--account",
        account_id,
        "--prefix",
        "+234803",
        "--upstream",
        "jasmin",
        "--id",
        "cinema-803",
        "--json",
    )
    assert code == 0, err
    # Then the table lists them most specific first, with ids (made from the match when none was given), and no
    # number was pinned (the account has none)
    assert table.pop("pinned") == []
    assert table == {
        "default_upstream": "simulator",
        "version": 2,
        "routes": [
            {
                "route_id": "cinema-803",
                "account_id": account_id,
                "network": None,
                "prefix": "234803",
                "upstream": "jasmin",
                "fallback": None,
            },
            {
                "route_id": "network-mtn",
                "account_id": None,
                "network": "mtn",
                "prefix": None,
                "upstream": "kannel",
                "fallback": "jasmin",
            },
        ],
    }
    assert shown(cli) == table
    # When the MTN route is set again with another upstream
    code, table, err = cli("set-route", "--network", "mtn", "--upstream", "simulator", "--json")
    # Then it replaces the first (same match, same id)
    assert code == 0, err
    assert [(r["route_id"], r["upstream"], r["fallback"]) for r in table["routes"]] == [
        ("cinema-803", "jasmin", None),
        ("network-mtn", "simulator", None),
    ]
    # When a route is removed
    code, table, err = cli("remove-route", "--id", "cinema-803", "--json")
    # Then the rest stays
    assert code == 0, err
    assert [r["route_id"] for r in table["routes"]] == ["network-mtn"]
    assert table["version"] == 4


def test_show_routes_reads_as_a_table(cli, upstreams):
    code, text, _ = cli("show-routes")
    assert code == 0
    assert text == "no routes: every message goes to simulator, the default upstream (table version 0)\n"
    cli("set-route", "--network", "mtn", "--upstream", "kannel", "--fallback", "jasmin")
    cli("set-route", "--prefix", "2348031", "--upstream", "jasmin")
    code, text, _ = cli("show-routes")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["route_id", "account_id", "network", "prefix", "upstream", "fallback"]
    assert lines[1].split() == ["prefix-2348031", "-", "-", "2348031", "jasmin", "-"]
    assert lines[2].split() == ["network-mtn", "-", "mtn", "-", "kannel", "jasmin"]
    assert "goes to simulator, the default upstream" in lines[3]


def test_the_default_upstream_is_the_targets_setting(cli, upstreams, monkeypatch):
    from sms_gateway import bootstrap

    monkeypatch.setenv("DEFAULT_UPSTREAM", "kannel")
    bootstrap.reset()
    assert shown(cli)["default_upstream"] == "kannel"


BAD_ROUTES = [
    (["--upstream", "kannel"], "at least one of account, network or prefix"),
    (["--network", "mtn", "--upstream", "kannel", "--fallback", "kannel"], "fallback must be another upstream"),
    (["--prefix", "23480x", "--upstream", "kannel"], "prefix '23480x' must be 1 to 15 digits"),
    # A range as a handset dials it would be stored as a route matching no number
    (["--prefix", "0803", "--upstream", "kannel"], "prefix '0803' can start no number"),
    (["--prefix", "00234803", "--upstream", "kannel"], "country code first"),
    (["--network", "mnt", "--upstream", "kannel"], "network 'mnt' is not a known network slug"),
    (["--network", "mtn", "--upstream", "Kannel"], "upstream 'Kannel' is not an upstream name"),
    (["--network", "mtn", "--upstream", "ghost"], "no upstream named 'ghost' is configured"),
    (["--network", "mtn", "--upstream", "kannel", "--fallback", "ghost"], "no upstream named 'ghost'"),
    (["--account", "404404", "--upstream", "kannel"], "no account 404404"),
    (["--network", "glo", "--upstream", "kannel", "--id", "has space"], "route id 'has space'"),
    # An empty id (--id "$ROUTE", unset) is refused, never taken as the id made from the match (replacing that route)
    (["--network", "glo", "--upstream", "kannel", "--id", ""], "route id ''"),
    (["--network", "airtel", "--upstream", "kannel", "--id", "other"], "route 'airtel' already matches"),
]


def test_a_bad_route_is_refused_and_changes_nothing(cli, upstreams):
    # Given a table with one route
    assert cli("set-route", "--network", "airtel", "--upstream", "jasmin", "--id", "airtel")[0] == 0
    before = shown(cli)
    # (one stack for all the cases: each refusal must leave it as it was anyway)
    for argv, fragment in BAD_ROUTES:
        # When a bad route is set
        code, out, err = cli("set-route", *argv)
        # Then it is refused on stderr with exit code 2, and the table is unchanged
        assert (code, out) == (2, ""), (argv, err)
        assert err.startswith("error: "), (argv, err)
        assert fragment in err, (argv, err)
        assert shown(cli) == before, argv


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        # a parameter written before its credentials were filled in
        ({"type": "kannel", "url": "http://127.0.0.1:13013"}, "'username'"),
        ({"type": "smpp", "url": "http://127.0.0.1:2775"}, "unknown type 'smpp'"),
        ("https://kannel.example/cgi-bin/sendsms", "not a JSON object"),
        ({**KANNEL, "callback_token": "short"}, "callback_token"),
        ({**KANNEL, "rate_limit_per_second": "30/s"}, "rate_limit_per_second"),
        ({**KANNEL, "country": "Nigeria"}, "country must be the ISO 3166 code"),
    ],
)
def test_an_upstream_whose_configuration_cannot_be_used_is_refused(cli, upstreams, aws, config, fragment):
    # Given an upstream whose parameter exists but from which the dispatcher can build no adapter: every message
    # routed to it would fail its records until they are dead-lettered (about 18 minutes later, charged and unsent),
    # exactly what set-route refuses a missing parameter for
    configure_upstream(aws, "broken", config=config)
    before = shown(cli)
    # When the operator routes to it, as the primary or as the fallback
    for argv in (["--upstream", "broken"], ["--upstream", "kannel", "--fallback", "broken"]):
        code, out, err = cli("set-route", "--network", "mtn", *argv)
        # Then it is refused, saying what is wrong with the configuration, and the table is unchanged
        assert (code, out) == (2, ""), (argv, err)
        assert "upstream 'broken'" in err, err
        assert fragment in err, err
        assert shown(cli) == before


def test_removing_an_unknown_route_is_refused(cli, upstreams):
    code, out, err = cli("remove-route", "--id", "nope")
    assert (code, out) == (2, "")
    assert "no route 'nope'" in err
    assert shown(cli)["version"] == 0


def test_remove_route_needs_an_id(cli):
    with pytest.raises(SystemExit) as exited:
        cli("remove-route")
    assert exited.value.code == 2


def someone_edits_after_our_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another operator's edit (route `theirs`) lands just after the next command reads the table."""
    from sms_gateway.adapters.dynamodb import DynamoStore

    real = DynamoStore.route_table

    def read_then_someone_edits(self: Any, default_upstream: str) -> Any:
        table = real(self, default_upstream)
        monkeypatch.setattr(DynamoStore, "route_table", real)
        self.put_route(Route(route_id="theirs", network="glo", upstream="jasmin"), table.version)
        return table

    monkeypatch.setattr(DynamoStore, "route_table", read_then_someone_edits)


def test_a_concurrent_edit_between_read_and_write_is_a_clear_conflict(cli, upstreams, monkeypatch):
    # Given another operator's edit lands just after our command read the table
    someone_edits_after_our_read(monkeypatch)
    # When our set-route writes
    code, out, err = cli("set-route", "--network", "mtn", "--upstream", "kannel")
    # Then it is refused, saying to read again, and only their route is in the table
    assert (code, out) == (2, "")
    assert "the route table changed since it was read" in err
    assert [r["route_id"] for r in shown(cli)["routes"]] == ["theirs"]


# ---------------------------------------------------------------- numbers that follow their routes


def with_senders(*senders: str, name: str = "Cinema Club") -> str:
    from sms_gateway_tools import admin

    return str(admin.create_account(name=name, senders=list(senders), credits=0)["account_id"])


def inbound_set(number: str) -> tuple[str, ...] | None:
    from sms_gateway.bootstrap import gateway

    registration = gateway().store.sender_registration(number)
    assert registration is not None
    return registration.inbound_upstreams


def test_routing_an_account_around_an_upstream_pins_its_numbers_that_followed_the_routes(cli, upstreams):
    # Given a general MTN route through kannel, an account whose 48974 follows its routes (so takes inbound SMS
    # from the simulator, the default, and kannel) and whose 55019 an operator bound to kannel, and another account
    mine = with_senders("48974", "55019")
    assert cli("set-sender", "--account", mine, "--sender", "55019", "--inbound-upstream", "kannel")[0] == 0
    other = with_senders("OTHERCO", name="Other Co")
    assert cli("set-route", "--network", "mtn", "--upstream", "kannel", "--json")[1]["pinned"] == []
    # When the operator routes all the account's sends to jasmin (as the runbook says when kannel fails)
    code, table, err = cli("set-route", "--account", mine, "--upstream", "jasmin", "--json")
    # Then the route is set, and 48974 is pinned to the upstreams the routes named before and after: an SMS kannel
    # or the simulator still delivers to it is taken, as is one from jasmin
    assert code == 0, err
    assert [r["route_id"] for r in table["routes"]] == [f"account-{mine}", "network-mtn"]
    assert table["pinned"] == [
        {"account_id": mine, "sender": "48974", "inbound_upstreams": ["jasmin", "kannel", "simulator"]}
    ]
    assert inbound_set("48974") == ("jasmin", "kannel", "simulator")
    # And the number the operator bound, and the other account's (whose routes lost nothing), are left alone
    assert (inbound_set("55019"), inbound_set("OTHERCO")) == (("kannel",), None)
    code, account, _ = cli("show-account", "--account", mine, "--json")
    assert account["inbound_upstreams_set"] == ["48974", "55019"]
    assert cli("show-account", "--account", other, "--json")[1]["inbound_upstreams_set"] == []
    # When the operator releases it, it follows the routes again (jasmin only), and a second edit pins nothing more
    cli("set-sender", "--account", mine, "--sender", "48974", "--inbound-from-routes")
    code, table, err = cli("set-route", "--account", mine, "--upstream", "jasmin", "--fallback", "kannel", "--json")
    assert (code, table["pinned"], inbound_set("48974")) == (0, [], None)


def test_a_general_route_change_or_removal_pins_the_numbers_of_every_account_that_loses_an_upstream(cli, upstreams):
    # Given a general MTN route through kannel (jasmin as fallback); one account following it, one whose own route
    # takes all its messages to the simulator (so no general route is ever chosen for it)
    cli("set-route", "--network", "mtn", "--upstream", "kannel", "--fallback", "jasmin")
    follows = with_senders("48974")
    own = with_senders("55019", name="Own Route")
    cli("set-route", "--account", own, "--upstream", "simulator")
    cli("set-sender", "--account", own, "--sender", "55019", "--inbound-from-routes")  # set-route pinned it
    # When the MTN route is moved from kannel to jasmin
    code, table, err = cli("set-route", "--network", "mtn", "--upstream", "jasmin", "--json")
    # Then only the number that took kannel's inbound SMS is pinned
    assert code == 0, err
    assert table["pinned"] == [
        {"account_id": follows, "sender": "48974", "inbound_upstreams": ["jasmin", "kannel", "simulator"]}
    ]
    assert inbound_set("55019") is None
    # And removing a route pins too, and says so in the text output, with how to release the number
    cli("set-sender", "--account", follows, "--sender", "48974", "--inbound-from-routes")
    code, text, err = cli("remove-route", "--id", "network-mtn")
    assert code == 0, err
    assert inbound_set("48974") == ("jasmin", "simulator")
    assert f"account {follows}  48974  jasmin, simulator" in text
    assert f"set-sender --account {follows} --sender 48974 --inbound-from-routes" in text


def test_a_refused_route_change_pins_nothing_and_one_refused_after_pinning_says_what_it_pinned(
    cli, upstreams, monkeypatch
):
    # Given an account whose number follows its routes (the simulator, the default upstream)
    mine = with_senders("48974")
    # When a route that takes the simulator away is refused before it is written (an unknown upstream, a bad id)
    for argv in (["--upstream", "ghost"], ["--upstream", "kannel", "--id", "has space"]):
        code, _, err = cli("set-route", "--account", mine, *argv)
        # Then nothing is pinned
        assert code == 2, err
        assert inbound_set("48974") is None, argv
    # When another operator's edit lands between our read of the table and our write
    someone_edits_after_our_read(monkeypatch)
    code, _, err = cli("set-route", "--account", mine, "--upstream", "kannel")
    # Then the route is refused, but the number was pinned before the write (never routes changed under a number
    # that follows them), and the error says so
    assert code == 2
    assert "the route table changed since it was read" in err
    assert "48974" in err and "--inbound-from-routes" in err
    assert inbound_set("48974") == ("kannel", "simulator")
    assert [r["route_id"] for r in shown(cli)["routes"]] == ["theirs"]


def test_before_the_default_upstream_changes_the_numbers_it_takes_away_from_are_pinned(cli, upstreams):
    # Given an account following the routes (the default, simulator) and one whose own route names kannel only
    follows = with_senders("48974")
    own = with_senders("55019", name="Own Route")
    cli("set-route", "--account", own, "--upstream", "kannel")
    cli("set-sender", "--account", own, "--sender", "55019", "--inbound-from-routes")
    # When the operator prepares a deploy with DefaultUpstream=jasmin
    code, answer, err = cli("pin-inbound", "--default-upstream", "jasmin", "--json")
    # Then the first account's number is pinned to the simulator and jasmin; the other loses nothing
    assert code == 0, err
    assert answer == {
        "default_upstream": "simulator",
        "new_default_upstream": "jasmin",
        "pinned": [{"account_id": follows, "sender": "48974", "inbound_upstreams": ["jasmin", "simulator"]}],
    }
    assert inbound_set("55019") is None
    # And an upstream that is not configured, or a name that is no upstream name, is refused, pinning nothing
    cli("set-sender", "--account", follows, "--sender", "48974", "--inbound-from-routes")
    code, _, err = cli("pin-inbound", "--default-upstream", "ghost")
    assert code == 2 and "no upstream named 'ghost'" in err
    code, _, err = cli("pin-inbound", "--default-upstream", "Kannel!")
    assert code == 2 and "default upstream 'Kannel!' is not an upstream name" in err
    assert inbound_set("48974") is None


def test_on_a_deployed_stack_the_stages_upstreams_and_default_apply(aws, capsys, monkeypatch):
    import boto3

    from sms_gateway_tools import cli

    # Given a deployed prod stack whose functions read /sms-gateway/prod/upstreams/ and set no DEFAULT_UPSTREAM
    template = {
        "Parameters": {"Stage": {"Type": "String", "Default": "prod"}},
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"TableName": {"Value": aws["TABLE_NAME"]}},
    }
    boto3.client("cloudformation").create_stack(StackName="gateway-prod", TemplateBody=json.dumps(template))
    configure_upstream(aws, "kannel", prefix="/sms-gateway/prod/upstreams/")
    # And a local stack's default upstream left in this shell
    monkeypatch.setenv("DEFAULT_UPSTREAM", "leftover")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["admin", *argv, "--stack-name", "gateway-prod"])
        out, err = capsys.readouterr()
        return code, out, err

    # When the operator routes to an upstream configured for prod only, and to one configured for dev only
    ok = run("set-route", "--network", "mtn", "--upstream", "kannel", "--json")
    refused = run("set-route", "--network", "glo", "--upstream", "simulator")
    # Then the prod one is accepted and the dev one refused, naming the prod parameter
    assert ok[0] == 0, ok[2]
    assert refused[0] == 2
    assert "no parameter /sms-gateway/prod/upstreams/simulator" in refused[2]
    # And the default upstream shown is the one the deployed functions use (the settings' default)
    code, out, _ = run("show-routes", "--json")
    assert code == 0
    assert json.loads(out)["default_upstream"] == "simulator"
    assert [r["route_id"] for r in json.loads(out)["routes"]] == ["network-mtn"]


@pytest.fixture
def local_stack_file(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """A running local stack's .local/stack.json, whose environment is the moto stack the `aws` fixture made."""
    from sms_gateway_tools.localstack import stack

    monkeypatch.setattr(stack, "default_state_dir", lambda: tmp_path)
    state = {"api_url": API_URL, "simulator_url": "http://127.0.0.1:9", "env": dict(aws)}
    (tmp_path / stack.STATE_FILE_NAME).write_text(json.dumps(state))
    return tmp_path


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from sms_gateway_tools import cli

    capsys.readouterr()
    code = cli.main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def upstream_parameter(env: dict[str, str], name: str) -> dict[str, Any] | None:
    import boto3

    ssm = boto3.client("ssm")
    try:
        found = ssm.get_parameter(Name=f"{env['UPSTREAM_PARAMETER_PREFIX']}{name}", WithDecryption=True)
    except ssm.exceptions.ParameterNotFound:
        return None
    return dict(json.loads(found["Parameter"]["Value"]))


def test_a_local_upstream_added_by_name_is_served_by_the_simulator_and_can_be_routed_to(
    aws, cli, local_stack_file, capsys
):
    # Given the local stack, whose only upstream is the simulator: a route to kannel is refused
    code, _, err = cli("set-route", "--network", "mtn", "--upstream", "kannel", "--fallback", "simulator")
    assert code == 2 and "no upstream named 'kannel'" in err
    # When the developer adds an upstream named kannel
    code, out, err = simulate(capsys, "add-upstream", "kannel")
    # Then it is configured as the simulator is (the same URL and secret: the simulator takes its messages)
    assert code == 0, err
    assert upstream_parameter(aws, "kannel") == upstream_parameter(aws, "simulator")
    assert "/upstreams/kannel" in out
    # And the operator's route to it, with the simulator as its fallback, is accepted
    code, _, err = cli("set-route", "--network", "mtn", "--upstream", "kannel", "--fallback", "simulator")
    assert code == 0, err
    # And adding it again changes nothing
    assert simulate(capsys, "add-upstream", "kannel")[0] == 0


def test_a_local_upstream_is_not_added_over_another_configuration_or_under_a_bad_name(aws, local_stack_file, capsys):
    # Given an upstream named jasmin configured by hand (another type, another URL)
    configure_upstream(aws, "jasmin")
    before = upstream_parameter(aws, "jasmin")
    # When the developer adds jasmin, or a name that is no upstream name
    for name, says in (("jasmin", "configured already"), ("Kannel!", "not an upstream name")):
        code, out, err = simulate(capsys, "add-upstream", name)
        # Then each is refused (exit 2) and nothing changes
        assert (code, out) == (2, ""), name
        assert says in err, (name, err)
    assert upstream_parameter(aws, "jasmin") == before


def test_an_inbound_sms_is_simulated_only_from_an_upstream_the_simulator_serves(aws, local_stack_file, capsys):
    # Given jasmin configured by hand (a Kannel: the simulator cannot speak for it), and no upstream named kannel
    configure_upstream(aws, "jasmin")
    # When the developer simulates an inbound SMS from each, or from a name that is no upstream name
    for name, says in (
        ("jasmin", "not one the simulator serves"),
        ("kannel", "simulate add-upstream kannel"),
        ("Kannel!", "not an upstream name"),
    ):
        code, out, err = simulate(
            capsys, "inbound", "--from", "2348020000000", "--to", "48974", "--message", "hi", "--upstream", name
        )
        # Then each is refused with what to do (exit 2), and nothing is posted
        assert (code, out) == (2, ""), name
        assert says in err, (name, err)


def test_adding_a_local_upstream_needs_a_running_local_stack(aws, monkeypatch, tmp_path, capsys):
    from sms_gateway_tools.localstack import stack

    # Given no local stack running
    monkeypatch.setattr(stack, "default_state_dir", lambda: tmp_path)
    # When an upstream is added
    code, _, err = simulate(capsys, "add-upstream", "kannel")
    # Then the command says so (exit 2) and nothing is configured
    assert code == 2 and "no local stack is running" in err
    assert upstream_parameter(aws, "kannel") is None

"""The route table: which upstream (and fallback) a message goes to, and which tables are refused."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sms_gateway.domain.routing import (
    MAX_ROUTES,
    Route,
    RouteChoice,
    RouteConflict,
    Routes,
    RouteTable,
    default_route_id,
)

ACCOUNT = "382686224833035612"
OTHER = "382686224833035999"
MTN_803 = "+2348031234567"
MTN_8039 = "+2348039876543"
MTN_802 = "+2348021234567"
PORTED_805 = "+2348051234567"
UK = "+447700900123"


def route(route_id: str, upstream: str, fallback: str | None = None, **match: str) -> Route:
    return Route(route_id=route_id, upstream=upstream, fallback=fallback, **match)


TABLE = RouteTable(
    default_upstream="default-up",
    routes=(
        route("net-mtn", "net", network="mtn"),
        route("prefix-803", "prefix", prefix="234803"),
        route("prefix-8031", "prefix-long", "prefix", prefix="2348031"),
        route("acct", "acct-only", account_id=ACCOUNT),
        route("acct-mtn", "acct-net", "net", account_id=ACCOUNT, network="mtn"),
        route("acct-803", "acct-prefix", account_id=ACCOUNT, prefix="234803"),
        route("prefix-805", "prefix-805", prefix="234805"),
        route("glo-805", "glo-805", network="glo", prefix="234805"),
    ),
)


@pytest.mark.parametrize(
    ("account_id", "telco", "msisdn", "expected"),
    [
        # account + prefix beats account + network, the account alone and every general route
        (ACCOUNT, "mtn", MTN_803, RouteChoice(primary="acct-prefix", route_id="acct-803")),
        # account + network beats the account alone and a general prefix... of another range
        (ACCOUNT, "mtn", MTN_802, RouteChoice(primary="acct-net", fallback="net", route_id="acct-mtn")),
        # the account alone beats general routes that match too (the prefix 234805 ones)
        (ACCOUNT, "glo", PORTED_805, RouteChoice(primary="acct-only", route_id="acct")),
        # another account: the longer prefix beats the shorter one and the network
        (OTHER, "mtn", MTN_803, RouteChoice(primary="prefix-long", fallback="prefix", route_id="prefix-8031")),
        (OTHER, "mtn", MTN_8039, RouteChoice(primary="prefix", route_id="prefix-803")),
        # a prefix beats a network
        (
            OTHER,
            "mtn",
            MTN_803.removeprefix("+"),
            RouteChoice(primary="prefix-long", fallback="prefix", route_id="prefix-8031"),
        ),
        (OTHER, "mtn", MTN_802, RouteChoice(primary="net", route_id="net-mtn")),
        # network + prefix beats the same prefix alone; a ported number (mtn in glo's range) takes the prefix alone
        (OTHER, "glo", PORTED_805, RouteChoice(primary="glo-805", route_id="glo-805")),
        (OTHER, "mtn", PORTED_805, RouteChoice(primary="prefix-805", route_id="prefix-805")),
        # nothing matches: the default upstream, without fallback
        (OTHER, "airtel", MTN_802, RouteChoice(primary="default-up")),
        (OTHER, None, UK, RouteChoice(primary="default-up")),
        # an unknown network matches no network route
        (OTHER, None, MTN_802, RouteChoice(primary="default-up")),
    ],
)
def test_the_most_specific_matching_route_wins(account_id, telco, msisdn, expected):
    # Given the table above
    # When a message of that account, network and number is routed
    chosen = TABLE.choose(account_id, telco, msisdn)
    # Then the expected route (or the default upstream) is chosen
    assert chosen == expected


def test_the_choice_lists_the_upstreams_to_try_in_order():
    assert TABLE.choose(OTHER, "mtn", MTN_803).upstreams == ("prefix-long", "prefix")
    assert TABLE.choose(OTHER, None, UK).upstreams == ("default-up",)


def test_an_empty_table_sends_everything_to_the_default_upstream():
    table = RouteTable(default_upstream="simulator")
    assert table.choose(ACCOUNT, "mtn", MTN_803) == RouteChoice(primary="simulator", fallback=None, route_id=None)
    assert table.version == 0


def test_routes_are_listed_most_specific_first():
    order = [r.route_id for r in TABLE.in_precedence_order()]
    assert order == [
        "acct-803",
        "acct-mtn",
        "acct",
        "prefix-8031",
        "glo-805",
        "prefix-803",
        "prefix-805",
        "net-mtn",
    ]


# ---------------------------------------------------------------- properties

ACCOUNTS = st.sampled_from([ACCOUNT, OTHER])
TELCOS = st.sampled_from([None, "mtn", "glo", "airtel"])
NUMBERS = st.sampled_from([MTN_803, MTN_8039, MTN_802, PORTED_805, UK, MTN_803.removeprefix("+")])
MATCHES = st.tuples(
    st.sampled_from([None, ACCOUNT, OTHER]),
    st.sampled_from([None, "mtn", "glo"]),
    st.sampled_from([None, "2", "234", "234803", "2348031", "234805", "44"]),
).filter(any)
UPSTREAMS = st.sampled_from(["kannel", "jasmin", "twilio", "simulator"])


def _route_for(match: tuple[str | None, str | None, str | None], upstream: str) -> Route:
    account_id, network, prefix = match
    return Route(
        route_id=default_route_id(account_id, network, prefix),
        account_id=account_id,
        network=network,
        prefix=prefix,
        upstream=upstream,
    )


@st.composite
def tables(draw: st.DrawFn) -> RouteTable:
    matches = draw(st.lists(MATCHES, unique=True, max_size=12))
    return RouteTable(default_upstream="simulator", routes=tuple(_route_for(m, draw(UPSTREAMS)) for m in matches))


@given(tables(), ACCOUNTS, TELCOS, NUMBERS, MATCHES, UPSTREAMS)
def test_adding_a_route_that_does_not_match_never_changes_the_choice(table, account_id, telco, msisdn, match, upstream):
    # Given a table and a route that does not match the message (and is not in the table)
    extra = _route_for(match, upstream)
    if extra.matches(account_id, telco, msisdn.removeprefix("+")) or any(r.match == extra.match for r in table.routes):
        return
    # When the route is added
    # Then the message is routed as before
    assert table.with_route(extra).choose(account_id, telco, msisdn) == table.choose(account_id, telco, msisdn)


@given(tables(), ACCOUNTS, TELCOS, NUMBERS)
def test_the_choice_matches_and_no_matching_route_is_more_specific(table, account_id, telco, msisdn):
    # When a message is routed
    chosen = table.choose(account_id, telco, msisdn)
    matching = [r for r in table.routes if r.matches(account_id, telco, msisdn.removeprefix("+"))]
    # Then with no matching route it is the default; otherwise it is a matching route, none more specific
    if not matching:
        assert chosen == RouteChoice(primary="simulator")
        return
    winner = table.find(chosen.route_id or "")
    assert winner in matching
    assert all(r.specificity <= winner.specificity for r in matching)


@given(tables(), ACCOUNTS, TELCOS, NUMBERS)
def test_an_accounts_upstreams_hold_every_upstream_its_messages_can_go_to(table, account_id, telco, msisdn):
    # The upstreams an account's numbers take inbound SMS from when no list is set for them (docs/providers.md)
    assert set(table.choose(account_id, telco, msisdn).upstreams) <= table.upstreams_for_account(account_id)


def test_an_accounts_upstreams_are_its_routes_primaries_and_fallbacks_and_no_other_accounts():
    table = RouteTable(
        default_upstream="simulator",
        routes=(
            route("own", "twilio", "kannel", account_id=ACCOUNT, network="mtn"),
            route("partner", "jasmin", account_id=OTHER),
            route("glo", "africastalking", network="glo"),
        ),
    )
    assert table.upstreams_for_account(ACCOUNT) == {"twilio", "kannel", "africastalking", "simulator"}
    assert table.upstreams_for_account(OTHER) == {"jasmin"}
    assert table.upstreams_for_account("382686224833035000") == {"africastalking", "simulator"}


@given(tables(), tables(), ACCOUNTS, st.sampled_from(["simulator", "kannel"]))
def test_an_edit_names_every_account_it_takes_an_upstream_away_from(before, edited, account_id, default_upstream):
    # Given any table and any other one it is edited into (the default upstream changed too, sometimes)
    after = RouteTable(default_upstream=default_upstream, routes=edited.routes)
    # When an account's routes name an upstream before the edit that they do not name after it
    if before.upstreams_for_account(account_id) <= after.upstreams_for_account(account_id):
        return
    # Then the edit names that account, or says any account may have lost one (the numbers to pin before it)
    affected = before.accounts_losing_upstreams(after)
    assert affected is None or account_id in affected


def test_an_edit_of_one_accounts_route_names_only_that_account_and_one_adding_upstreams_none():
    general = route("mtn", "kannel", "jasmin", network="mtn")
    table = RouteTable(default_upstream="simulator", routes=(general, route("own", "twilio", account_id=ACCOUNT)))
    assert table.accounts_losing_upstreams(table.with_route(route("own", "jasmin", account_id=ACCOUNT))) == {ACCOUNT}
    assert table.accounts_losing_upstreams(table.with_route(route("mtn", "kannel", "twilio", network="mtn"))) is None
    assert table.accounts_losing_upstreams(table.with_route(route("glo", "twilio", network="glo"))) == frozenset()
    assert table.accounts_losing_upstreams(table.model_copy(update={"default_upstream": "kannel"})) is None


@given(tables(), ACCOUNTS, TELCOS, NUMBERS, st.randoms(use_true_random=False))
def test_the_order_of_the_routes_does_not_matter(table, account_id, telco, msisdn, rnd: random.Random):
    shuffled = list(table.routes)
    rnd.shuffle(shuffled)
    reordered = RouteTable(default_upstream=table.default_upstream, routes=tuple(shuffled))
    assert reordered.choose(account_id, telco, msisdn) == table.choose(account_id, telco, msisdn)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"upstream": "kannel"}, "at least one of account, network or prefix"),
        ({"upstream": "kannel", "fallback": "kannel", "network": "mtn"}, "fallback must be another upstream"),
        ({"upstream": "kannel", "prefix": "23480a"}, "prefix '23480a' must be 1 to 15 digits"),
        ({"upstream": "kannel", "prefix": ""}, "prefix '' must be"),
        ({"upstream": "kannel", "prefix": "+"}, "prefix '+' must be"),
        ({"upstream": "kannel", "prefix": "2" * 16}, "must be 1 to 15 digits"),
        ({"upstream": "kannel", "prefix": "\uff12\uff13\uff14"}, "must be 1 to 15 digits"),
        ({"upstream": "kannel", "network": "mnt"}, "network 'mnt' is not a known network slug"),
        ({"upstream": "Kannel", "network": "mtn"}, "upstream 'Kannel' is not an upstream name"),
        ({"upstream": "a/b", "network": "mtn"}, "upstream 'a/b' is not an upstream name"),
        ({"upstream": "", "network": "mtn"}, "upstream '' is not an upstream name"),
        ({"upstream": "kannel", "fallback": "../x", "network": "mtn"}, "fallback '../x' is not an upstream name"),
        ({"upstream": "kannel", "account_id": "", "network": "mtn"}, "account id '' is not an account id"),
        ({"upstream": "kannel", "account_id": "a b", "network": "mtn"}, "is not an account id"),
    ],
)
def test_a_bad_route_is_refused_with_the_reason(fields, fragment):
    with pytest.raises(ValidationError) as refused:
        Route(route_id="r1", **fields)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("route_id", ["", "has space", "-leading", "x" * 129, "semi;colon"])
def test_a_bad_route_id_is_refused(route_id):
    with pytest.raises(ValidationError, match="route id"):
        Route(route_id=route_id, network="mtn", upstream="kannel")


def test_a_route_is_normalised():
    # A leading '+' on the prefix and capitals in the network are how operators type them
    normal = Route(route_id="r1", network=" MTN ", prefix="+234803", upstream="kannel")
    assert (normal.network, normal.prefix) == ("mtn", "234803")


def test_the_default_upstream_must_be_an_upstream_name():
    with pytest.raises(ValidationError, match="default upstream"):
        RouteTable(default_upstream="Not A Name")


def test_a_table_with_two_routes_of_one_id_or_one_match_is_refused():
    a = route("a", "kannel", network="mtn")
    with pytest.raises(ValidationError, match="appears twice"):
        Routes(routes=(a, route("a", "jasmin", network="glo")))
    with pytest.raises(ValidationError, match="both match network=mtn"):
        Routes(routes=(a, route("b", "jasmin", network="mtn")))


def test_a_table_holds_at_most_max_routes():
    many = tuple(route(f"r{i}", "kannel", prefix=str(i)) for i in range(MAX_ROUTES + 1))
    with pytest.raises(ValidationError, match=f"at most {MAX_ROUTES}"):
        Routes(routes=many)


def test_adding_a_route_with_the_match_of_another_is_a_conflict():
    # Given a route for mtn
    table = Routes(routes=(route("lagos", "kannel", network="mtn"),))
    # When another id is given the same match
    # Then it is refused, naming the route that has it
    with pytest.raises(RouteConflict, match="route 'lagos' already matches network=mtn"):
        table.with_route(route("other", "jasmin", network="mtn"))


@pytest.mark.parametrize("prefix", ["0803", "+0803", "00234803", "999"])
def test_a_prefix_no_number_can_start_with_is_refused_when_a_route_is_set(prefix):
    # Given an operator typing a range the way a handset dials it: Nigeria's 0803, or 00 234 803, or a typo (999)
    table = Routes(routes=(route("lagos", "kannel", network="mtn"),), version=3)
    # When it is set as a route
    # Then it is refused, saying how a prefix is written, instead of stored as a route that matches no number (its
    # messages going to the default upstream without a word)
    with pytest.raises(ValueError, match="country code first"):
        table.with_route(route("r", "twilio", prefix=prefix))
    # And a table stored with such a route before it was refused still loads (a dispatcher reads it for every
    # record), its route matching nothing as before
    stored = RouteTable(default_upstream="simulator", routes=(route("r", "twilio", prefix=prefix),))
    assert stored.choose(ACCOUNT, "mtn", MTN_803) == RouteChoice(primary="simulator")


def test_a_prefix_of_a_calling_code_or_within_one_is_taken():
    table = Routes()
    for prefix in ("2", "23", "234", "+234803", "2348031", "1", "44"):
        assert table.with_route(route("r", "kannel", prefix=prefix)).find("r") is not None


def test_setting_a_route_of_the_same_id_replaces_it_in_place():
    table = Routes(routes=(route("a", "kannel", network="mtn"), route("b", "jasmin", network="glo")), version=4)
    updated = table.with_route(route("a", "twilio", "kannel", prefix="234803"))
    assert [r.route_id for r in updated.routes] == ["a", "b"]
    assert updated.find("a") == route("a", "twilio", "kannel", prefix="234803")
    # The version is the store's business: a pure edit keeps it
    assert updated.version == 4
    # And the table it came from is unchanged
    assert table.find("a") == route("a", "kannel", network="mtn")


def test_removing_a_route():
    table = RouteTable(default_upstream="simulator", routes=(route("a", "kannel", network="mtn"),))
    assert table.without_route("a").routes == ()
    assert table.without_route("a").default_upstream == "simulator"
    with pytest.raises(LookupError, match="no route 'b'"):
        table.without_route("b")


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ((ACCOUNT, None, None), f"account-{ACCOUNT}"),
        ((None, "MTN", "+234803"), "network-mtn.prefix-234803"),
        ((ACCOUNT, "9mobile", "234809"), f"account-{ACCOUNT}.network-9mobile.prefix-234809"),
    ],
)
def test_a_route_id_made_from_the_match(match, expected):
    made = default_route_id(*match)
    assert made == expected
    # And it is a valid route id
    assert Route(route_id=made, account_id=match[0], network=match[1], prefix=match[2], upstream="kannel")

"""Inbound SMS whose numbers an upstream writes in national or `00` form, through the real webhook handler: an SMSC
(Kannel, Jasmin) passes the numbers as the network gives them, `08020000011` or `002348020000011` for the long code
an operator registered as `2348020000011`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_callback_acknowledgements import TOKEN, configure, kannel_inbound_event
from tests.integration.test_notifications_and_inbound_edges import queued_notifications
from tests.integration.test_send_path import FakeContext, load_function

LONG_CODE = "2348020000011"
HANDSET = "2348031234567"


def kannel(aws: dict[str, str], **settings: Any) -> None:
    configure(
        aws,
        "kannel",
        {
            "type": "kannel",
            "url": "http://127.0.0.1:13013",
            "username": "u",
            "password": "p",
            "callback_token": TOKEN,
            **settings,
        },
    )


def long_code_account() -> dict[str, Any]:
    """An account owning the long code, its inbound SMS delivered by Kannel."""
    from sms_gateway_tools.admin import create_account, set_sender

    account = create_account(name="Cinema Club", senders=[LONG_CODE], credits=100)
    set_sender(account_id=account["account_id"], sender=LONG_CODE, inbound_upstreams=["kannel"])
    return account


def kannel_mo(sender: str, to: str, text: str, message_id: str = "mo-1") -> dict[str, Any]:
    query = {"token": TOKEN, "from": sender, "to": to, "ts": "1767398400", "id": message_id, "text": text}
    return kannel_inbound_event(query, "text/plain", text, encoded=False)


@pytest.mark.parametrize(
    ("to", "settings"),
    [
        # national form, the upstream's country configured
        ("08020000011", {"country": "NG"}),
        # international with the `00` prefix: no country needed
        ("002348020000011", {}),
        ("+2348020000011", {}),  # as before
    ],
)
def test_an_sms_to_the_long_code_in_the_smsc_s_form_reaches_its_owner_with_numbers_in_international_form(
    aws, to, settings
):
    # Given an account owning 2348020000011, and Kannel (configured with its country where it writes national forms)
    kannel(aws, **settings)
    account = long_code_account()
    # When Kannel posts a handset's SMS with the numbers as the SMSC wrote them
    answer = load_function("webhook").handler(kannel_mo("08031234567", to, "Yes please"), FakeContext())
    # Then it is stored for the account and forwarded with both numbers in international form, as the seeds show
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert (stored.msisdn, stored.to, stored.text) == (f"+{HANDSET}", LONG_CODE, "Yes please")
    [notification] = [n for n in queued_notifications(aws) if n.get("kind") == "inbound"]
    assert notification["account_id"] == account["account_id"]
    assert (notification["payload"]["from"], notification["payload"]["to"]) == (HANDSET, LONG_CODE)


def test_a_stop_to_the_long_code_in_national_form_opts_the_handset_out_of_it(aws):
    # Given Kannel, configured with its country, delivering the long code's SMS in national form
    kannel(aws, country="NG")
    account = long_code_account()
    # When the handset texts STOP, both numbers national
    answer = load_function("webhook").handler(kannel_mo("08031234567", "08020000011", "STOP"), FakeContext())
    # Then the handset is opted out of the long code: the account's next send from it to the handset is refused
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    opted = gateway().store.opted_out(account["account_id"], LONG_CODE, [f"+{HANDSET}"])
    assert f"+{HANDSET}" in opted


def test_a_retried_sms_in_national_form_is_stored_and_forwarded_once(aws):
    # Given Kannel delivering the long code's SMS in national form
    kannel(aws, country="NG")
    account = long_code_account()
    webhook = load_function("webhook")
    # When it posts the same SMS twice (it did not get our answer)
    for _ in range(2):
        answer = webhook.handler(kannel_mo("08031234567", "08020000011", "Yes", "mo-7"), FakeContext())
        assert answer["statusCode"] == 200, answer
    # Then it is stored once and forwarded once
    from sms_gateway.bootstrap import gateway

    assert len(gateway().store.list_inbounds(account["account_id"])[0]) == 1
    assert len([n for n in queued_notifications(aws) if n.get("kind") == "inbound"]) == 1


@pytest.mark.parametrize("country", [None, "ng"])
def test_a_short_code_is_found_as_written_and_a_national_form_is_read_only_in_the_upstream_s_country(
    aws, account, country
):
    # Given Kannel with or without its country, an account owning the long code, and another (the fixture's) the
    # short code 48974, which is no number in Nigeria
    kannel(aws, **({"country": country} if country else {}))
    owner = long_code_account()
    from sms_gateway_tools.admin import set_sender

    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["kannel"])
    webhook = load_function("webhook")
    # When Kannel posts an SMS to each, the long code in national form
    national = webhook.handler(kannel_mo("08031234567", "08020000011", "Hi", "mo-1"), FakeContext())
    short_code = webhook.handler(kannel_mo("08031234567", "48974", "Hi", "mo-2"), FakeContext())
    # Then the short code's reaches its owner as written, either way
    assert (national["statusCode"], short_code["statusCode"]) == (200, 200)
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    [stored] = store.list_inbounds(account["account_id"])[0]
    assert stored.to == "48974"
    # And the national form is read in the upstream's country when it has one (`ng` is NG); without, it is
    # acknowledged and dropped as to a number no account owns: nothing is guessed, it could be any country's
    assert [sms.to for sms in store.list_inbounds(owner["account_id"])[0]] == ([LONG_CODE] if country else [])


def test_a_national_sender_is_read_in_the_upstream_s_country_whatever_the_account_s_default(aws):
    # Given a Nigerian SMSC's Kannel (country NG) delivering the long code of an account whose default country is
    # Ghana (it sends mostly there)
    from sms_gateway_tools.admin import set_account

    kannel(aws, country="NG")
    account = long_code_account()
    set_account(account_id=account["account_id"], country="GH")
    # When a Nigerian handset texts STOP, its number in the national form of the SMSC's country
    answer = load_function("webhook").handler(kannel_mo("08031234567", LONG_CODE, "STOP"), FakeContext())
    # Then the SMS is from that Nigerian number (not a sender that is no number), and the STOP opts it out
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.msisdn == f"+{HANDSET}"
    assert f"+{HANDSET}" in gateway().store.opted_out(account["account_id"], LONG_CODE, [f"+{HANDSET}"])


@pytest.mark.parametrize("settings", [{}, {"country": "NG"}])
@pytest.mark.parametrize("to", ["+2348020000011", "2348020000011", "002348020000011"])
def test_a_long_code_registered_in_national_form_gets_its_sms_sent_to_it_in_international_form(aws, to, settings):
    # Given an account (default country NG) that registered its long code as it writes it at home, 08020000011,
    # and Kannel, with or without its country, delivering its SMS
    from sms_gateway_tools.admin import create_account, set_sender

    kannel(aws, **settings)
    account = create_account(name="Cinema Club", senders=["08020000011"], credits=100)
    set_sender(account_id=account["account_id"], sender="08020000011", inbound_upstreams=["kannel"])
    # When a handset's SMS to it comes with the number in international form, as most upstreams write it
    answer = load_function("webhook").handler(kannel_mo(f"+{HANDSET}", to, "STOP"), FakeContext())
    # Then it reaches the account under the number as registered, and its STOP opts the handset out of it
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    [stored] = store.list_inbounds(account["account_id"])[0]
    assert (stored.msisdn, stored.to) == (f"+{HANDSET}", "08020000011")
    assert f"+{HANDSET}" in store.opted_out(account["account_id"], "08020000011", [f"+{HANDSET}"])


def test_a_national_form_is_the_number_it_names_in_its_account_s_country_not_another_country_s(aws):
    # Given an account in Ghana that registered its long code as written there, 0241234567 (+233 24 123 4567),
    # which is also how Australia writes +61 2 4123 4567 at home
    from sms_gateway_tools.admin import create_account, set_account, set_sender

    kannel(aws)
    account = create_account(name="Accra Club", senders=["0241234567"], credits=100)
    set_account(account_id=account["account_id"], country="GH")
    set_sender(account_id=account["account_id"], sender="0241234567", inbound_upstreams=["kannel"])
    webhook = load_function("webhook")
    # When an SMS comes to each of the two numbers, in international form
    for to, message_id in (("+61241234567", "mo-au"), ("+233241234567", "mo-gh")):
        answer = webhook.handler(kannel_mo(f"+{HANDSET}", to, "Hi", message_id), FakeContext())
        assert answer["statusCode"] == 200, answer
    # Then only the one to the Ghanaian number reaches the account
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert (stored.upstream_message_id, stored.to) == ("mo-gh", "0241234567")


@pytest.mark.parametrize(("to", "settings"), [("+2348020000011", {}), ("08020000011", {"country": "NG"})])
def test_a_stop_to_a_released_long_code_registered_in_national_form_stays_with_the_number_for_its_next_owner(
    aws, to, settings
):
    # Given an account (default country NG) whose routes go through Kannel, that registered its long code as written
    # at home, 08020000011; then the operator released the number (it moves to another customer)
    from sms_gateway_tools.admin import add_sender, create_account, remove_sender, set_route

    kannel(aws, **settings)
    account = create_account(name="Cinema Club", senders=["08020000011"], credits=100)
    set_route(upstream="kannel", account_id=account["account_id"])
    remove_sender(account_id=account["account_id"], sender="08020000011")
    # When a handset the old owner texted from it answers STOP while no account holds it, the number written as
    # Kannel writes it
    answer = load_function("webhook").handler(kannel_mo(f"+{HANDSET}", to, "STOP"), FakeContext())
    assert answer["statusCode"] == 200, answer
    # And the operator gives the number, as registered, to its next owner
    other = create_account(name="Next Owner", senders=["55555"], credits=100)
    added = add_sender(account_id=other["account_id"], sender="08020000011")
    # Then the handset's STOP came with it: the next owner does not text it from that number
    from sms_gateway.bootstrap import gateway

    assert added["opt_outs_carried_over"] == 1
    assert f"+{HANDSET}" in gateway().store.opted_out(other["account_id"], "08020000011", [f"+{HANDSET}"])

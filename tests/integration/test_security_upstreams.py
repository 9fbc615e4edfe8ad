"""One upstream cannot settle another's messages: a callback authenticated by an upstream's own token (a
query-string token for Kannel, Jasmin and Africa's Talking, which their SMSCs store and log) applies only to the
messages that upstream carries. Through the real handlers on moto."""

from __future__ import annotations

import httpx

from tests.integration.test_security_logs import Upstreams, _dispatch
from tests.security_stack import Gateway, configure_upstreams, populate

SENDER = "48974"


def test_an_upstream_cannot_settle_or_refund_a_message_another_upstream_carries(aws, monkeypatch):
    from sms_gateway import bootstrap
    from sms_gateway.adapters import http
    from sms_gateway.domain.status import MessageStatus

    configurations = configure_upstreams(aws, kannel_url="http://kannel.test")
    monkeypatch.setattr(
        http._local, "client", httpx.AsyncClient(transport=httpx.MockTransport(Upstreams())), raising=False
    )
    gateway = Gateway.start()
    victim = populate(gateway, "Victim", SENDER)
    # Given the victim's message submitted through Kannel, and its balance after paying for it
    _dispatch(aws, monkeypatch, "kannel")
    bootstrap.reset()
    store = bootstrap.gateway().store
    account_id = victim.account["account_id"]
    (message,), _ = store.list_messages(account_id, int(victim.reference_id))
    assert message.upstream == "kannel" and message.status == MessageStatus.SUBMITTED, message
    account = store.get_account(account_id)
    assert account is not None
    credits = account.credits
    # When Jasmin's callback (authenticated by Jasmin's token alone) reports that message undeliverable
    answer = gateway.request(
        "POST",
        "/callbacks/jasmin/dlr",
        query={"token": configurations["jasmin"]["callback_token"], "ref": message.key.to_ref()},
        headers={"content-type": "application/x-www-form-urlencoded"},
        body="id=forged-1&message_status=UNDELIV&err=001",
    )
    # Then it is acknowledged (Jasmin would re-send it forever otherwise) and applies nothing: Kannel carries the
    # message, so only Kannel's reports settle it, and no credit moves
    [after] = store.get_messages_by_key([message.key])
    account = store.get_account(account_id)
    assert account is not None
    assert (answer.status, after.status, account.credits) == (200, MessageStatus.SUBMITTED, credits), answer

"""Opt-out keywords and their effect on sends, against in-memory fakes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sms_gateway.domain.models import (
    Account,
    CallbackRequest,
    Credentials,
    DeliveryReportMode,
    InboundSms,
    Recipient,
    SendCommand,
)
from sms_gateway.domain.msisdn import parse_msisdn
from sms_gateway.domain.optouts import (
    ALL_SENDERS,
    OPERATOR,
    KeywordAction,
    OptOut,
    keyword_of,
    keyword_request,
    refusal_reason,
    sender_key,
)
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import InsufficientCredits, InvalidRequest, NotFound, OptedOut, Unavailable
from sms_gateway.logic import optouts
from sms_gateway.logic.inbound import InboundDependencies, inbound_notification, receive_inbound
from sms_gateway.logic.notify import notifications_of
from sms_gateway.logic.scheduled import release_scheduled_batch
from sms_gateway.logic.send import Accepted, SendDependencies, accept_send
from tests.fakes import FakeProvider, InMemoryStore, RecordingQueue, RecordingScheduler, fake_routes

NOW = datetime(2026, 1, 2, 23, 50, 37, tzinfo=UTC)
STOPPED = "+2348020000000"
OTHER = "+2348030000000"


class OptOutMemoryStore(InMemoryStore):
    """InMemoryStore plus ports.OptOutStore, with the same counter on the account as the DynamoDB adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.opt_out_records: dict[tuple[str, str, str], OptOut] = {}
        self.lookups = 0
        self.fail_opt_outs = False
        # Release records: sender (registry form) -> the account that released it, while no account holds it.
        self.released: dict[str, str] = {}

    def sender_released_by(self, sender: str) -> str | None:
        return self.released.get(sender_key(sender))

    def _check_released(self, sender: str | None, account_id: str, while_released: bool) -> None:
        if while_released and (sender is None or self.released.get(sender_key(sender)) != account_id):
            raise Unavailable(f"sender {sender!r} is no longer released by account {account_id}")

    def _count(self, account_id: str, delta: int) -> None:
        account = self.accounts[account_id]
        self.accounts[account_id] = account.model_copy(update={"opt_outs": account.opt_outs + delta})

    def opt_out(self, opt_out: OptOut, *, while_released: bool = False) -> bool:
        if self.fail_opt_outs:
            raise RuntimeError("DynamoDB is down")
        self._check_released(opt_out.sender, opt_out.account_id, while_released)
        if opt_out.account_id not in self.accounts:
            raise NotFound(f"no account {opt_out.account_id}")
        key = (opt_out.account_id, sender_key(opt_out.sender), opt_out.msisdn)
        if key in self.opt_out_records:
            return False
        self.opt_out_records[key] = opt_out.model_copy(update={"sender": sender_key(opt_out.sender)})
        self._count(opt_out.account_id, 1)
        return True

    def opt_in(
        self,
        account_id: str,
        msisdn: str,
        sender: str | None,
        *,
        only: Collection[str] | None = None,
        while_released: bool = False,
    ) -> int:
        self._check_released(sender, account_id, while_released)
        senders = (
            {s for (a, s, n) in self.opt_out_records if (a, n) == (account_id, msisdn)}
            if sender is None
            else {key for key in (sender_key(sender), ALL_SENDERS) if only is None or key in only}
        )
        removed = [key for key in [(account_id, s, msisdn) for s in senders] if self.opt_out_records.pop(key, None)]
        self._count(account_id, -len(removed))
        return len(removed)

    def opted_out(
        self, account_id: str, sender: str, msisdns: Sequence[str], *, known_count: int | None = None
    ) -> dict[str, OptOut]:
        self.lookups += 1
        found: dict[str, OptOut] = {}
        for msisdn in msisdns:
            for scope in (ALL_SENDERS, sender_key(sender)):
                if (account_id, scope, msisdn) in self.opt_out_records:
                    found[msisdn] = self.opt_out_records[(account_id, scope, msisdn)]
        return found

    def list_opt_outs(self, account_id: str) -> list[OptOut]:
        return [o for (a, _, _), o in self.opt_out_records.items() if a == account_id]


@pytest.fixture
def store() -> OptOutMemoryStore:
    """Account "7" with 1000 credits and two shortcodes, 48974 and 48975."""
    store = OptOutMemoryStore()
    store.create_account(
        Account(account_id="7", name="Cinema", credits=1000, senders=("48974", "48975")),
        Credentials(token="t", apikey="k", partner_id="1", username="u", password="p"),
    )
    return store


def stop(store: OptOutMemoryStore, msisdn: str = STOPPED, sender: str = "48974", keyword: str = "STOP") -> None:
    assert store.opt_out(
        OptOut(account_id="7", sender=sender, msisdn=msisdn, keyword=keyword, at="2026-01-01T08:00:00.000000Z")
    )


def send(
    store: OptOutMemoryStore,
    *numbers: str,
    sender: str = "48974",
    queue: RecordingQueue | None = None,
    **options: object,
):
    command = SendCommand(
        account_id="7", sender=sender, text="hello", recipients=tuple(Recipient(msisdn=n) for n in numbers), **options
    )
    deps = SendDependencies(
        accounts=store,
        messages=store,
        dispatch_queue=queue if queue is not None else RecordingQueue(),
        scheduler=RecordingScheduler(),
        prices=store,
        opt_outs=store,
    )
    return accept_send(store.accounts["7"], command, deps, now=NOW)


# ------------------------------------------------------------------ keywords


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", "STOP"),
        ("stop", "STOP"),
        (" Stop! ", "STOP"),
        ("stop.\n", "STOP"),
        ("STOP!!!", "STOP"),
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("end", "END"),
        ("Cancel", "CANCEL"),
        ("quit?", "QUIT"),
        ("StopAll", "STOPALL"),
        ("start", "START"),
        ("UNSTOP", "UNSTOP"),
        ("please stop texting", None),
        ("stop it", None),
        ("STOP STOP", None),
        ("stopp", None),
        ("HELP", None),
        ("YES", None),
        ("", None),
        ("!!!", None),
        ("\u017ftop", None),  # the long s upper-cases to S: not a keyword
    ],
)
def test_a_keyword_is_the_whole_message_trimmed_in_any_case(text, keyword):
    # When an inbound message's text is read / Then it is that keyword, or none
    assert keyword_of(text) == keyword


def test_stop_opts_out_of_the_sender_it_was_sent_to_stopall_of_every_sender_start_back_in():
    # Given keyword messages sent to our long number, written with a '+'
    # When they are read / Then STOP names that sender, in the registry's form
    assert keyword_request("stop", "+2348090000000") == keyword_request("STOP", "2348090000000")
    request = keyword_request("stop", "+2348090000000")
    assert request is not None
    assert (request.action, request.keyword, request.sender) == (KeywordAction.OPT_OUT, "STOP", "2348090000000")
    # And STOPALL names every sender, START opts back in to the sender, HELP asks for nothing
    everything = keyword_request("STOPALL", "48974")
    assert everything is not None and (everything.action, everything.sender) == (KeywordAction.OPT_OUT, ALL_SENDERS)
    back = keyword_request("Start", "48974")
    assert back is not None and (back.action, back.sender) == (KeywordAction.OPT_IN, "48974")
    assert keyword_request("HELP", "48974") is None


def test_the_refusal_names_the_number_the_sender_the_keyword_and_its_date():
    # Given a STOP to 48974, a STOPALL and an operator's opt-out
    base = {"account_id": "7", "msisdn": STOPPED, "at": "2026-01-01T08:00:00.000000Z"}
    # Then each refusal says who opted out of whom, how and when
    assert (
        refusal_reason(OptOut(sender="48974", keyword="STOP", **base), "48974")
        == "2348020000000 opted out of messages from 48974 (STOP received 2026-01-01)"
    )
    assert "from every sender of this account (STOPALL received 2026-01-01)" in refusal_reason(
        OptOut(sender=ALL_SENDERS, keyword="STOPALL", **base), "48974"
    )
    assert "(recorded by an operator 2026-01-01)" in refusal_reason(
        OptOut(sender="48974", keyword=OPERATOR, **base), "48974"
    )


# ------------------------------------------------------------------ sends


class TestSendToOptedOutNumbers:
    def test_the_opted_out_number_is_refused_and_not_charged_the_other_is_sent(self, store):
        # Given a number that sent STOP to 48974
        stop(store)
        queue = RecordingQueue()
        # When 48974 sends to it and to another number
        accepted: Accepted = send(store, STOPPED, OTHER, queue=queue)
        # Then only the other is stored, charged and queued
        assert accepted.batch.recipients == 1
        assert [m.msisdn for m in accepted.messages] == [OTHER]
        assert [m.msisdn for m in store.messages.values()] == [OTHER]
        assert store.accounts["7"].credits == 999
        assert accepted.batch.cost == 1
        assert [len(c.message_ids) for c in queue.commands] == [1]
        # And the refusal names the number without '+' and why
        assert [(r.raw, r.reason) for r in accepted.refused] == [
            ("2348020000000", "2348020000000 opted out of messages from 48974 (STOP received 2026-01-01)")
        ]

    def test_when_every_recipient_opted_out_nothing_is_stored_charged_or_queued(self, store):
        # Given two numbers that opted out of 48974
        stop(store)
        stop(store, OTHER)
        queue = RecordingQueue()
        # When 48974 sends to both
        with pytest.raises(OptedOut) as refused:
            send(store, STOPPED, OTHER, queue=queue)
        # Then the error names both, and nothing happened
        assert refused.value.code == "opted_out"
        assert "2348020000000 opted out" in refused.value.message
        assert "2348030000000 opted out" in refused.value.message
        assert store.accounts["7"].credits == 1000
        assert store.batches == {} and store.messages == {}
        assert queue.commands == []

    def test_a_stop_to_one_shortcode_does_not_stop_the_accounts_other_shortcode(self, store):
        # Given a STOP to 48974
        stop(store)
        # When 48975 sends to that number / Then it is sent
        accepted = send(store, STOPPED, sender="48975")
        assert accepted.refused == [] and accepted.batch.recipients == 1

    def test_stopall_refuses_every_sender_of_the_account(self, store):
        # Given a STOPALL (sent to 48974)
        stop(store, sender=ALL_SENDERS, keyword="STOPALL")
        # When either shortcode sends to it / Then it is refused
        for sender in ("48974", "48975"):
            with pytest.raises(OptedOut, match="every sender of this account"):
                send(store, STOPPED, sender=sender)
        assert store.accounts["7"].credits == 1000

    def test_an_account_with_no_opt_outs_costs_no_lookup(self, store):
        # Given an account whose counter is zero
        assert store.accounts["7"].opt_outs == 0
        # When it sends / Then the opt-outs are never read
        send(store, STOPPED, OTHER)
        assert store.lookups == 0
        # But once a number opted out, they are
        stop(store, "+2348050000000")
        send(store, STOPPED)
        assert store.lookups == 1

    def test_refused_numbers_are_not_part_of_the_balance_check(self, store):
        # Given an account with 1 credit and one of two recipients opted out
        stop(store)
        store.accounts["7"] = store.accounts["7"].model_copy(update={"credits": 1})
        # When it sends to both / Then the one that remains is affordable
        send(store, STOPPED, OTHER)
        assert store.accounts["7"].credits == 0
        # And without the opt-out the same send would have been refused
        with pytest.raises(InsufficientCredits):
            send(store, OTHER, "+2348050000000")


class TestScheduledSendsAtTheirRelease:
    def release(self, store: OptOutMemoryStore, reference_id: int, queue: RecordingQueue, announced: list) -> bool:
        return release_scheduled_batch(
            "7",
            reference_id,
            messages=store,
            accounts=store,
            opt_outs=store,
            queue=queue,
            clock=lambda: NOW + timedelta(hours=1),
            announce=announced.extend,
        )

    def test_a_number_that_opted_out_since_the_send_is_failed_refunded_and_reported_the_others_are_sent(self, store):
        # Given a batch from 48974 to two numbers, scheduled an hour ahead with delivery reports (2 credits)
        batch = send(
            store, STOPPED, OTHER, send_at=NOW + timedelta(hours=1), delivery_report=DeliveryReportMode.YES
        ).batch
        assert store.accounts["7"].credits == 998
        # And one of them sends STOP to 48974 before the schedule fires
        stop(store)
        queue, announced = RecordingQueue(), []
        # When it fires
        assert self.release(store, batch.reference_id, queue, announced)
        # Then only the other number's message is queued for dispatch
        by_number = {m.msisdn: m for m in store.messages.values()}
        assert [list(c.message_ids) for c in queue.commands] == [[by_number[OTHER].message_id]]
        # And the stopped number's message is failed, named for the opt-out as a send's refusal is, and refunded
        stopped = by_number[STOPPED]
        assert (stopped.status, stopped.error_code) == (MessageStatus.FAILED, "opted_out")
        assert store.accounts["7"].credits == 999
        # And the client that asked for delivery reports is told, as of any other failure
        assert [n["payload"]["status"] for n in notifications_of(announced)] == ["failed"]
        assert notifications_of(announced)[0]["payload"]["error_code"] == "opted_out"
        # And a second firing refunds nothing more and reports the same change again (one webhook id: deduplicated)
        again: list = []
        assert not self.release(store, batch.reference_id, RecordingQueue(), again)
        assert store.accounts["7"].credits == 999
        assert [n["id"] for n in notifications_of(again)] == [n["id"] for n in notifications_of(announced)]

    def test_when_every_number_opted_out_nothing_is_queued_and_everything_is_refunded(self, store):
        # Given a batch to one number scheduled an hour ahead, whose number opts out of every sender meanwhile
        batch = send(store, STOPPED, send_at=NOW + timedelta(hours=1)).batch
        stop(store, sender=ALL_SENDERS, keyword="STOPALL")
        queue, announced = RecordingQueue(), []
        # When the schedule fires
        self.release(store, batch.reference_id, queue, announced)
        # Then nothing is queued, the credit is back, and no report is queued (the batch asked for none)
        assert queue.commands == []
        assert [m.status for m in store.messages.values()] == [MessageStatus.FAILED]
        assert store.accounts["7"].credits == 1000
        assert notifications_of(announced) == []

    def test_an_account_with_no_opt_outs_costs_no_lookup_at_the_release(self, store):
        batch = send(store, STOPPED, OTHER, send_at=NOW + timedelta(hours=1)).batch
        queue: RecordingQueue = RecordingQueue()
        self.release(store, batch.reference_id, queue, [])
        assert store.lookups == 0
        assert [len(c.message_ids) for c in queue.commands] == [2]


# ------------------------------------------------------------------ inbound keywords


def inbound(text: str, upstream_id: str = "sim-1", to: str = "48974") -> FakeProvider:
    provider = FakeProvider()
    provider.inbound = InboundSms(
        upstream="fake",
        upstream_message_id=upstream_id,
        msisdn=STOPPED,
        to=to,
        text=text,
        received_at="2026-01-02T23:50:37.000000Z",
    )
    return provider


def receive(store: OptOutMemoryStore, provider: FakeProvider, published: list, opt_outs=True, threads=False):
    deps = InboundDependencies(
        accounts=store,
        inbox=store,
        publish=published.append,
        clock=lambda: NOW,
        routes=fake_routes,
        opt_outs=store if opt_outs else None,
        conversations=store if threads else None,
    )
    return receive_inbound(
        provider, CallbackRequest(method="POST", url="https://x", headers={"x-token": "s3cret"}), deps
    )


class TestKeywordsToAReleasedSender:
    """Between an operator's remove-sender and add-sender nobody holds 48976: a STOP / START to it changes the
    releasing account's opt-out of it, which add-sender carries over (docs/opt-outs.md, "A sender that moves")."""

    @pytest.fixture
    def released(self, store):
        store.released["48976"] = "7"
        return store

    def test_a_stop_is_applied_to_the_releasing_account_and_nothing_is_stored_or_forwarded(self, released):
        published: list = []
        outcome = receive(released, inbound("Stop!", to="48976"), published)
        assert (outcome.routed, outcome.stored) == (False, False)
        [record] = released.opt_out_records.values()
        assert (record.account_id, record.sender, record.msisdn, record.keyword) == ("7", "48976", STOPPED, "STOP")
        assert record.inbound_id is None
        assert released.accounts["7"].opt_outs == 1
        assert published == []
        assert released.list_inbounds("7")[0] == []

    def test_a_stopall_opts_out_of_that_sender_only_and_a_start_takes_back_only_that(self, released):
        # Given the number's STOPALL to the account's own 48974, while it held it
        receive(released, inbound("STOPALL", "sim-1"), [])
        # When it texts STOPALL, then START, to the released 48976
        receive(released, inbound("STOPALL", "sim-2", to="48976"), [])
        assert set(released.opt_out_records) == {("7", ALL_SENDERS, STOPPED), ("7", "48976", STOPPED)}
        receive(released, inbound("START", "sim-3", to="48976"), [])
        # Then its opt-out of 48976 is gone, the STOPALL the account received stays, counted exactly
        assert set(released.opt_out_records) == {("7", ALL_SENDERS, STOPPED)}
        assert released.accounts["7"].opt_outs == 1

    def test_any_other_sms_a_keyword_to_a_number_nobody_released_or_from_another_upstream_stay_dropped(self, released):
        published: list = []
        assert receive(released, inbound("hello", to="48976"), published).routed is False
        assert receive(released, inbound("STOP", to="48977"), published).routed is False
        # And a STOP from an upstream the releasing account's routes do not name (its credentials valid)
        partner = inbound("STOP", "sim-9", to="48976")
        partner.name = "partner"
        assert receive(released, partner, published).routed is False
        assert released.opt_out_records == {}
        assert published == []

    def test_a_failed_write_fails_the_callback_for_the_upstream_to_retry(self, released):
        # Given the sender given to an account between the callback's read of the release and its write
        released.sender_released_by = lambda sender: "7"  # type: ignore[method-assign]
        released.released.clear()
        # When a STOP to it arrives / Then the callback fails (a 5xx), nothing written
        with pytest.raises(Unavailable):
            receive(released, inbound("STOP", to="48976"), [])
        assert released.opt_out_records == {}
        assert released.accounts["7"].opt_outs == 0


class TestInboundKeywords:
    def test_stop_opts_the_number_out_and_is_still_forwarded_in_the_seed_shape(self, store):
        published: list = []
        # When the number texts " Stop! " to 48974
        outcome = receive(store, inbound(" Stop! "), published)
        # Then it is opted out of 48974, counted, with the keyword, time and the inbound that asked
        [record] = store.opt_out_records.values()
        assert (record.sender, record.msisdn, record.keyword) == ("48974", STOPPED, "STOP")
        assert record.at == "2026-01-02T23:50:37.000000Z"
        assert outcome.inbound is not None and record.inbound_id == outcome.inbound.inbound_id
        assert store.accounts["7"].opt_outs == 1
        # And the client still gets the SMS, exactly as the "Receive SMS" seed shapes it
        assert published == [inbound_notification(outcome.inbound)]
        assert set(published[0]["payload"]) == {
            "type",
            "telco",
            "from",
            "to",
            "message",
            "session_id",
            "sent_date",
            "ref_id",
        }
        assert published[0]["payload"]["message"] == " Stop! "

    def test_a_duplicate_stop_callback_changes_nothing_more(self, store):
        published: list = []
        receive(store, inbound("STOP"), published)
        # When the upstream posts the same callback again
        again = receive(store, inbound("STOP"), published)
        # Then it is not stored, counted or forwarded twice (the first callback queued its notification)
        assert again.stored is False
        assert store.accounts["7"].opt_outs == 1
        assert len(published) == 1

    def test_a_second_stop_message_keeps_the_first_record(self, store):
        receive(store, inbound("STOP", "sim-1"), [])
        # When the number sends STOP again (a new message)
        receive(store, inbound("stop", "sim-2"), [])
        # Then it is still one opt-out, counted once
        assert len(store.opt_out_records) == 1
        assert store.accounts["7"].opt_outs == 1

    def test_start_removes_the_senders_opt_out_and_a_stopall(self, store):
        # Given a STOP to 48974 and a STOPALL
        receive(store, inbound("STOP", "sim-1"), [])
        receive(store, inbound("STOPALL", "sim-2"), [])
        assert store.accounts["7"].opt_outs == 2
        # When the number texts START to 48974
        receive(store, inbound("start", "sim-3"), [])
        # Then both are gone, the counter is back to zero, and 48974 may send to it again
        assert store.opt_out_records == {}
        assert store.accounts["7"].opt_outs == 0
        assert send(store, STOPPED).batch.recipients == 1

    def test_start_to_one_shortcode_leaves_a_stop_to_the_other(self, store):
        receive(store, inbound("STOP", "sim-1", to="48975"), [])
        # When the number texts START to 48974
        receive(store, inbound("START", "sim-2"), [])
        # Then its STOP to 48975 stands
        assert store.accounts["7"].opt_outs == 1
        with pytest.raises(OptedOut):
            send(store, STOPPED, sender="48975")

    @pytest.mark.parametrize("text", ["please stop texting me", "HELP", "When is the next show?"])
    def test_other_messages_and_help_are_only_forwarded(self, store, text):
        published: list = []
        receive(store, inbound(text), published)
        assert store.opt_out_records == {}
        assert len(published) == 1 and published[0]["payload"]["message"] == text

    def test_without_an_opt_out_store_a_stop_is_only_forwarded(self, store):
        published: list = []
        receive(store, inbound("STOP"), published, opt_outs=False)
        assert store.opt_out_records == {} and len(published) == 1

    def test_a_failing_opt_out_write_forwards_the_sms_and_fails_the_callback_for_its_retry_to_apply(self, store):
        # Given an opt-out store that fails
        store.fail_opt_outs = True
        published: list = []
        # When STOP arrives: the client still gets it, and the callback fails so the upstream retries it
        with pytest.raises(RuntimeError, match="DynamoDB is down"):
            receive(store, inbound("STOP"), published)
        assert len(published) == 1 and store.opt_out_records == {}
        # And when the upstream retries it, the store back
        store.fail_opt_outs = False
        outcome = receive(store, inbound("STOP"), published)
        # Then the repeat is not stored again and the STOP is applied; the client is not sent the SMS again (its
        # notification was queued by the first callback)
        assert outcome.stored is False
        assert list(store.opt_out_records) == [("7", "48974", STOPPED)]
        assert len(published) == 1
        # And once the number opted back in, a further repeat of the STOP applies nothing
        store.opt_in("7", STOPPED, None)
        receive(store, inbound("STOP"), published)
        assert store.opt_out_records == {}

    def test_a_stop_from_a_national_number_of_the_accounts_country_refuses_sends_to_that_number(self, store):
        # Given an account in the US whose SMSC passes the handset's number in national form (SMPP TON national),
        # as docs/providers-smsc.md says is read in the account's country
        store.accounts["7"] = store.accounts["7"].model_copy(update={"default_country": "US"})
        provider = inbound("STOP")
        provider.inbound = provider.inbound.model_copy(update={"msisdn": "6465550123"})
        published: list = []
        # When (646) 555-0123 texts STOP to 48974
        receive(store, provider, published)
        # Then the client is told it came from +1 646 555 0123, in international form as the seeds promise
        assert published[0]["payload"]["from"] == "16465550123"
        # And a send to that number, as the client writes it, is refused
        with pytest.raises(OptedOut):
            send(store, parse_msisdn("6465550123", "US").e164)


# ------------------------------------------------------------------ operator opt-outs


class TestOperatorOptOuts:
    def test_an_operator_opt_out_without_a_sender_covers_every_sender(self, store):
        # When the operator records an opt-out for a local-form number
        record, new = optouts.record_opt_out(store, store, "7", "08020000000", None, now=NOW)
        # Then it is the number in E.164, of every sender, marked as the operator's
        assert new is True
        assert (record.msisdn, record.sender, record.keyword) == (STOPPED, ALL_SENDERS, OPERATOR)
        with pytest.raises(OptedOut, match="recorded by an operator"):
            send(store, STOPPED, sender="48975")

    def test_opt_in_without_a_sender_removes_every_opt_out_of_the_number(self, store):
        stop(store)
        stop(store, sender="48975")
        stop(store, OTHER)
        # When the operator opts the number back in
        msisdn, removed = optouts.remove_opt_out(store, store, "7", "2348020000000", None)
        # Then both of its opt-outs are gone and the other number's stays
        assert (msisdn, removed) == (STOPPED, 2)
        assert [o.msisdn for o in optouts.list_opt_outs(store, store, "7")] == [OTHER]
        assert store.accounts["7"].opt_outs == 1

    @pytest.mark.parametrize(
        ("account_id", "number", "sender", "error", "fragment"),
        [
            ("8", "2348020000000", None, NotFound, "no account 8"),
            ("7", "12", None, InvalidRequest, "not a valid number"),
            ("7", "2348020000000", "NOTMINE", InvalidRequest, "not registered"),
        ],
    )
    def test_bad_operator_requests_change_nothing(self, store, account_id, number, sender, error, fragment):
        with pytest.raises(error, match=fragment):
            optouts.record_opt_out(store, store, account_id, number, sender, now=NOW)
        assert store.opt_out_records == {}
        assert store.accounts["7"].opt_outs == 0


# ------------------------------------------------------------------ review (session 28): queued messages at dispatch


def dispatch_first(store: OptOutMemoryStore, queue: RecordingQueue, provider: FakeProvider, **options: object):
    """The first dispatch record `queue` was given, dispatched ten minutes after the send, opt-outs looked at."""
    import asyncio

    from sms_gateway.logic.dispatch import DispatchDependencies, dispatch

    deps = DispatchDependencies(
        messages=store,
        accounts=store,
        upstreams_for=lambda _: [provider],
        callback_base_url="https://gw.example/",
        clock=lambda: NOW + timedelta(minutes=10),
        opt_outs=store,
        **options,  # type: ignore[arg-type]
    )
    return asyncio.run(dispatch(queue.commands[0], deps))


def test_a_queued_message_whose_number_sends_stop_before_it_is_dispatched_is_not_sent_nor_charged(store):
    # Given a message from 48974 queued for a number (charged 1 credit), still waiting in the account's FIFO lane
    # (behind its bulk batches, a rate limit or an upstream outage: up to the 24 h validity)
    queue = RecordingQueue()
    send(store, STOPPED, queue=queue)
    assert store.accounts["7"].credits == 999
    # And the number texts STOP to 48974 before the dispatcher reaches it
    stop(store)
    provider = FakeProvider()
    # When the dispatcher takes the record
    dispatch_first(store, queue, provider)
    # Then the number is not sent to from 48974 again ("not sent to from that sender again until it texts START",
    # docs/opt-outs.md), and the message is failed opted_out and refunded, as a scheduled one is at its release
    assert provider.submits == []
    [message] = store.messages.values()
    assert (message.status, message.error_code) == (MessageStatus.FAILED, "opted_out")
    assert store.accounts["7"].credits == 1000


def test_a_queued_batch_reports_its_stopped_message_failed_and_sends_the_others(store):
    # Given a batch from 48974 to two numbers, with delivery reports, queued; then one of them texts STOP
    queue = RecordingQueue()
    send(store, STOPPED, OTHER, queue=queue, delivery_report=DeliveryReportMode.YES)
    stop(store)
    provider, announced = FakeProvider(), []
    # When the dispatcher takes the record
    outcome = dispatch_first(store, queue, provider, announce=announced.extend)
    # Then only the other number is sent to; the stopped one is failed, refunded and reported to the client
    assert [request.msisdn for request in provider.submits] == [OTHER]
    assert (outcome.submitted, outcome.failed) == (1, 1)
    assert store.accounts["7"].credits == 999
    [report] = [n["payload"] for n in notifications_of(announced) if n["payload"]["status"] == "failed"]
    assert report["error_code"] == "opted_out"


def test_a_message_handed_back_after_a_throttle_is_failed_at_its_next_dispatch_when_its_number_stopped(store):
    # Given a queued message an upstream throttled: claimed, then handed back with no attempt counted
    queue = RecordingQueue()
    send(store, STOPPED, queue=queue)
    [message] = store.messages.values()
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="fake")
    store.release_claim(message.key, attempted=False, throttled=True)
    # And its number texts STOP while it waits out the backoff
    stop(store)
    provider = FakeProvider()
    # When its record comes back
    dispatch_first(store, queue, provider)
    # Then it is not sent: failed opted_out and refunded
    assert provider.submits == []
    assert store.messages[message.key].error_code == "opted_out"
    assert store.accounts["7"].credits == 1000


def test_a_message_an_upstream_may_have_is_not_failed_and_refunded_when_its_number_stops(store):
    # Given a queued message whose submit got no answer from an upstream that may have it (handed back naming it)
    queue = RecordingQueue()
    send(store, STOPPED, queue=queue)
    [message] = store.messages.values()
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="fake")
    store.release_claim(message.key, maybe_taken_by="fake")
    stop(store)
    # When its record comes back
    dispatch_first(store, queue, FakeProvider())
    # Then it is not failed and refunded: it may be on its way, and its report settles it
    assert store.messages[message.key].error_code != "opted_out"
    assert store.accounts["7"].credits == 999


@pytest.mark.parametrize("how", ["its_submit_got_no_answer", "its_dispatcher_died_mid_submit"])
def test_a_message_an_upstream_may_have_is_not_offered_again_once_its_number_stops(store, how):
    # Given a queued message a deduplicating upstream may have: its submit got no answer (handed back naming it), or
    # its dispatcher died submitting it (its claim lapsed by the time the record comes back); it may be there, or the
    # request never reached it
    queue = RecordingQueue()
    send(store, STOPPED, queue=queue)
    [message] = store.messages.values()
    store.claim_for_dispatch(message.key, now=NOW, lease_seconds=120, upstream="fake")
    if how == "its_submit_got_no_answer":
        store.release_claim(message.key, maybe_taken_by="fake")
    # And its number texts STOP to 48974 before the record comes back
    stop(store)
    provider = FakeProvider()
    provider.deduplicates_submits = True  # type: ignore[attr-defined]
    # When its record comes back
    dispatch_first(store, queue, provider)
    # Then it is not submitted again: if the upstream never got it, that submit is a new SMS to a number that said
    # STOP ("not sent to from that sender again until it texts START"); its report (or its absence) settles it
    assert provider.submits == []
    # And it is recorded submitted-unconfirmed at that upstream, not refunded
    settled = store.messages[message.key]
    assert (settled.status, settled.error_code, settled.upstream) == (
        MessageStatus.SUBMITTED,
        "submit_unconfirmed",
        "fake",
    )
    assert store.accounts["7"].credits == 999


def test_the_dispatcher_reads_no_opt_out_for_an_account_that_has_none(store):
    # Given a message queued by an account with no opt-outs
    queue = RecordingQueue()
    send(store, STOPPED, queue=queue)
    provider = FakeProvider()
    # When the dispatcher takes the record / Then it is sent, and no opt-out was read for it
    dispatch_first(store, queue, provider)
    assert len(provider.submits) == 1
    assert store.lookups == 0


@pytest.mark.parametrize("sender", ["MTN", "131"])
def test_a_stop_from_a_sender_id_or_short_code_is_forwarded_but_opts_nothing_out_and_threads_onto_nothing(
    store, sender
):
    # Given an SMS whose sender is no phone number (a sender cannot be texted back, so it has no conversation and
    # no opt-out to record)
    provider, published = inbound("STOP"), []
    provider.inbound = provider.inbound.model_copy(update={"msisdn": f" {sender} "})
    # When its upstream delivers it (to a gateway that threads replies and applies keywords)
    outcome = receive(store, provider, published, threads=True)
    # Then it is stored and forwarded with its sender as given (trimmed) and no telco, in a conversation of its own
    assert outcome.inbound is not None
    assert (outcome.inbound.msisdn, outcome.inbound.telco, outcome.inbound.keyword_pending) == (sender, None, False)
    [notification] = published
    assert (notification["payload"]["from"], notification["payload"]["telco"]) == (sender, None)
    assert (notification["payload"]["ref_id"], outcome.inbound.in_reply_to) == (None, None)
    # And no opt-out is recorded
    assert store.opt_out_records == {}


@pytest.mark.parametrize(
    ("sender", "why"),
    [("  ", "no sender"), ("1" * 33, "longer than 32"), ("MTN\nERROR forged", "control character")],
)
def test_a_sender_that_cannot_be_one_is_refused_and_nothing_is_stored(store, sender, why):
    from sms_gateway.errors import CallbackRejected

    provider = inbound("hello")
    provider.inbound = provider.inbound.model_copy(update={"msisdn": sender})
    with pytest.raises(CallbackRejected, match=why):
        receive(store, provider, [])
    assert store.inbox == {}

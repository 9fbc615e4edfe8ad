"""Delivery reports that come early or part by part, and replies threaded onto the conversation they answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
import pytest

from sms_gateway.adapters.providers.kannel import KannelProvider
from sms_gateway.domain.models import (
    DeliveryReport,
    DeliveryReportMode,
    InboundSms,
    Message,
    SendCommand,
    StatusChange,
    SubmitRequest,
)
from sms_gateway.domain.status import MessageStatus
from sms_gateway.logic.delivery import DeliveryDependencies, DeliveryOutcome, apply_delivery_report
from sms_gateway.logic.dispatch import dispatch
from sms_gateway.logic.inbound import InboundDependencies, receive_inbound
from sms_gateway.logic.notify import dlr_notification
from sms_gateway.logic.settle import settle, settle_checks
from sms_gateway.logic.sweep import (
    SWEEP_LIMIT,
    SweepDependencies,
    SweepIncomplete,
    SweepOutcome,
    sweep_notifications,
)
from tests.fakes import FakeProvider, InMemoryStore, cinema_store, fake_routes, inbox_key
from tests.unit.test_logic import NOW, callback, clock, command, dispatch_deps, send, settle_deps

LONG_TEXT = "x" * 400  # three GSM-7 parts of at most 153 characters
KANNEL_TOKEN = "kannel-callback-token-0123"


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


def delivery(store: InMemoryStore, changes: list[StatusChange] | None = None) -> DeliveryDependencies:
    return DeliveryDependencies(
        messages=store, accounts=store, clock=clock, on_change=None if changes is None else changes.append
    )


def apply(store: InMemoryStore, report: DeliveryReport, changes: list[StatusChange] | None = None) -> DeliveryOutcome:
    outcome = DeliveryOutcome()
    apply_delivery_report(report, delivery(store, changes), outcome)
    return outcome


class TestReportsThatOvertakeTheSubmit:
    def test_a_dlr_for_an_upstream_id_not_yet_linked_is_held_then_applied_when_the_dispatcher_links_it(self, store):
        # Given a queued message whose upstream reports by its own id only (no client reference echoed)
        _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES))
        provider = FakeProvider()
        credits_after_send = store.accounts["7"].credits
        # When the upstream's "delivered" for id up-1 arrives before the dispatcher recorded the submit
        early = DeliveryReport(upstream="fake", upstream_message_id="up-1", status=MessageStatus.DELIVERED)
        outcome = apply(store, early)
        # Then it is held, not dropped, and the message has not moved yet
        assert (outcome.held, outcome.unmatched, outcome.applied) == (1, 0, 0)
        [message] = store.messages.values()
        assert message.status == MessageStatus.QUEUED
        # When the dispatcher submits it (the upstream answers id up-1) and links the id
        result = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, provider)))
        # Then the held report is applied: the message is delivered, and both changes reach the client in order
        current = store.messages[message.key]
        assert current.status == MessageStatus.DELIVERED
        assert [change.message.status for change in result.changes] == [
            MessageStatus.SUBMITTED,
            MessageStatus.DELIVERED,
        ]
        assert [change.message.sequence for change in result.changes] == [2, 3]
        # And it stays on the link, for a second link write (the settle check's) to hand back if this one had died
        assert store.held == {("fake", "up-1"): [early]}
        assert store.accounts["7"].credits == credits_after_send  # delivered: nothing refunded

    def test_a_dlr_after_the_link_finds_the_message_by_the_upstream_id(self, store):
        # Given a message submitted and linked to upstream id up-1
        _, deps = send(store, command(1))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
        # When the upstream reports by that id, twice
        report = DeliveryReport(upstream="fake", upstream_message_id="up-1", status=MessageStatus.DELIVERED)
        first, second = apply(store, report), apply(store, report)
        # Then the first moves it and the duplicate changes nothing; nothing is held
        assert (first.applied, second.unchanged, first.held + second.held) == (1, 1, 0)

    def test_a_report_naming_neither_a_reference_nor_an_upstream_id_is_unmatched(self, store):
        outcome = apply(store, DeliveryReport(upstream="fake", status=MessageStatus.DELIVERED))
        assert (outcome.unmatched, outcome.held) == (1, 0)

    def test_a_report_for_another_upstreams_id_is_not_applied_to_this_message(self, store):
        _, deps = send(store, command(1))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
        outcome = apply(store, DeliveryReport(upstream="other", upstream_message_id="up-1", status="failed"))
        assert outcome.held == 1
        assert next(iter(store.messages.values())).status == MessageStatus.SUBMITTED


class TestMultiPartMessages:
    def submitted(self, store: InMemoryStore):
        _, deps = send(store, command(1, text=LONG_TEXT, delivery_report=DeliveryReportMode.YES))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
        [message] = store.messages.values()
        assert message.parts == 3
        return message

    def part(self, message, number: int, status: str) -> DeliveryReport:
        return DeliveryReport(upstream="fake", client_ref=message.key.to_ref(), status=status, part=number)

    def test_the_message_is_delivered_only_when_every_part_is(self, store):
        message = self.submitted(store)
        changes: list[StatusChange] = []
        # When parts 1 and 3 are reported delivered (part 3 twice)
        outcomes = [apply(store, self.part(message, n, "delivered"), changes) for n in (1, 3, 3)]
        # Then the message is still submitted: part 2 has not been reported
        assert store.messages[message.key].status == MessageStatus.SUBMITTED
        assert [o.partial for o in outcomes] == [1, 1, 1]
        assert changes == []
        # When part 2 is delivered
        apply(store, self.part(message, 2, "delivered"), changes)
        # Then the message is delivered, once
        assert store.messages[message.key].status == MessageStatus.DELIVERED
        assert [c.message.status for c in changes] == [MessageStatus.DELIVERED]

    def test_one_part_failing_finally_fails_the_message_and_refunds_it(self, store):
        message = self.submitted(store)
        balance = store.accounts["7"].credits
        apply(store, self.part(message, 1, "delivered"))
        outcome = apply(store, self.part(message, 2, "failed"))
        assert outcome.applied == 1
        assert store.messages[message.key].status == MessageStatus.FAILED
        assert store.accounts["7"].credits == balance + message.price
        # A late "delivered" for the other parts never brings it back
        apply(store, self.part(message, 2, "delivered"))
        apply(store, self.part(message, 3, "delivered"))
        assert store.messages[message.key].status == MessageStatus.FAILED
        assert store.accounts["7"].credits == balance + message.price

    def test_a_part_never_moves_back(self, store):
        message = self.submitted(store)
        apply(store, self.part(message, 1, "delivered"))
        apply(store, self.part(message, 1, "submitted"))
        assert store.messages[message.key].part_status["1"] == "delivered"

    @staticmethod
    def kannel_parser(client: httpx.AsyncClient | None = None) -> KannelProvider:
        """The Kannel upstream (max_parts 3) that carries the messages `submitted` makes."""
        return KannelProvider(
            name="fake",
            url="http://kannel:13013",
            username="u",
            password="p",
            callback_token=KANNEL_TOKEN,
            max_parts=3,
            client=client,
        )

    def kannel_reports(
        self, message: Message, text: str = LONG_TEXT, sent: list[httpx.Request] | None = None
    ) -> Callable[..., DeliveryReport]:
        """The reports a Kannel upstream (max_parts 3) parses from the DLR URL its submit of `message` gave Kannel
        (its one sendsms, `sent`), as Kannel fills it in for one report."""
        from tests.integration.test_provider_kannel import callback, kannel_expands

        sent = [] if sent is None else sent

        def smsbox(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return httpx.Response(202, text="0: Accepted for delivery")

        kannel = self.kannel_parser(httpx.AsyncClient(transport=httpx.MockTransport(smsbox)))
        request = SubmitRequest(
            client_ref=message.key.to_ref(),
            sender="48974",
            msisdn=message.msisdn,
            text=text,
            dlr_url="https://gw/callbacks/fake/dlr",
        )
        asyncio.run(kannel.submit(request))

        def report(escapes: dict[str, str], url: str | None = None) -> DeliveryReport:
            url = url or sent[0].url.params["dlr-url"]
            called = callback(kannel_expands(url, {"T": "1795309364", "i": "smpp", **escapes}))
            assert kannel.verify_callback(called)
            [parsed] = kannel.parse_delivery_reports(called)
            return parsed

        return report

    def test_a_kannel_long_message_settles_on_the_reports_a_real_kannel_sends_for_it(self):
        from tests.integration.test_provider_kannel import kannel_captured, replayed

        settled = []
        for scenario in (
            "3 GSM parts, each delivered",
            "3 GSM parts, part 1 undelivered",
            "3 UCS-2 parts, emoji on the boundary, part 2 refused by the SMSC",
        ):
            # Given a 3-part message handed to Kannel, and the DLR fetches a real Kannel 1.4.5 made over SMPP for
            # such a message: it asked a receipt for the first part only, so it reports that part (%F) alone
            store = cinema_store()
            message = self.submitted(store)
            kannel = self.kannel_parser()
            ref = message.key.to_ref()
            # When each of them reaches us
            for recorded in kannel_captured(scenario):
                called = replayed(recorded, ref=ref, token=KANNEL_TOKEN)
                assert kannel.verify_callback(called)
                [report] = kannel.parse_delivery_reports(called)
                apply(store, report)
            settled.append((store.messages[message.key].status, store.messages[message.key].error_code))
        # Then the message settles as that receipt says, as a message of one part: delivered, failed (the SMSC's
        # error code), rejected by the SMSC; not left to expire and be refunded after the DLR wait
        assert settled == [
            (MessageStatus.DELIVERED, None),
            (MessageStatus.FAILED, "001"),
            (MessageStatus.REJECTED, None),
        ]

    def test_a_kannel_long_message_handed_over_before_the_dlr_url_named_the_part_still_settles(self, store):
        # Given a long message Kannel took before the deploy: its dlr-url has no part (Kannel keeps the URL it got)
        message = self.submitted(store)
        report = self.kannel_reports(message)
        old_url = (
            f"https://gw/callbacks/fake/dlr?ref={message.key.to_ref()}&token=kannel-callback-token-0123"
            "&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P"
        )
        # When its first "delivered" report comes
        apply(store, report({"d": "1", "A": "stat:DELIVRD err:000"}, url=old_url))
        # Then it settles the message as before (nothing tells its parts apart), not left to expire
        assert store.messages[message.key].status == MessageStatus.DELIVERED

    @pytest.mark.parametrize(
        "text",
        # A text Kannel cuts as it was counted, and one it would cut through an emoji (sent padded): both go whole
        [LONG_TEXT, "я" * 66 + "😀" + "я" * 66],
        ids=["as-counted", "emoji-on-the-boundary"],
    )
    def test_a_kannel_refusal_for_now_of_a_long_message_sends_it_later_whole_never_a_part_of_it(self, store, text):
        from sms_gateway.adapters.providers.kannel import KannelProvider
        from sms_gateway.domain.segments import padded_for_blind_cut
        from tests.integration.test_provider_kannel import sendsms_fields

        # Given a Kannel that answers its documented 503 Temporal failure (its outgoing queue full, nothing taken)
        # once, and takes everything after that
        statuses = iter([503])
        taken: list[dict[str, bytes]] = []

        def smsbox(request: httpx.Request) -> httpx.Response:
            if next(statuses, 202) == 202:
                taken.append(sendsms_fields(request))
                return httpx.Response(202, text="0: Accepted for delivery")
            return httpx.Response(503, text="Temporal failure, try again later.")

        kannel = KannelProvider(
            name="fake",
            url="http://kannel:13013",
            username="u",
            password="p",
            callback_token="kannel-callback-token-0123",
            max_parts=3,
            client=httpx.AsyncClient(transport=httpx.MockTransport(smsbox)),
        )
        _, deps = send(store, command(1, text=text, delivery_report=DeliveryReportMode.YES))
        [record] = deps.dispatch_queue.commands
        # When the record is dispatched, and dispatched again while the dispatcher asks for it back (SQS redelivery)
        for _ in range(5):
            outcome = asyncio.run(dispatch(record, dispatch_deps(store, kannel)))
            if not outcome.retry:
                break
        # Then the whole message reached Kannel once, one sendsms of the 3 parts it was charged for, for Kannel to cut
        [message] = store.messages.values()
        assert message.status == MessageStatus.SUBMITTED
        assert message.parts == 3
        [fields] = taken
        assert fields["text"].decode() == padded_for_blind_cut(text) and "udh" not in fields

    def test_a_kannel_ucs2_message_with_an_emoji_on_a_part_boundary_settles_on_the_one_report_kannel_sends(self, store):
        from sms_gateway.domain.segments import padded_for_blind_cut
        from tests.integration.test_provider_kannel import sendsms_fields

        # Given a UCS-2 text of 134 UTF-16 units whose emoji's surrogate pair straddles unit 67, where Kannel would
        # cut it (134 octets): counted and charged as 3 parts, the emoji whole in part 2
        text = "я" * 66 + "😀" + "я" * 66
        _, deps = send(store, command(1, text=text, delivery_report=DeliveryReportMode.YES))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
        [message] = store.messages.values()
        sent: list[httpx.Request] = []
        report = self.kannel_reports(message, text, sent)
        # And it went to Kannel as one sendsms, padded so Kannel cuts it into those 3 parts
        [request] = sent
        assert sendsms_fields(request)["text"].decode() == padded_for_blind_cut(text)
        assert message.parts == 3
        changes: list[StatusChange] = []
        # When the SMSC accepts it (type 8) and reports its first part delivered: the one receipt Kannel asks for
        apply(store, report({"d": "8", "A": "ACK/"}), changes)
        apply(store, report({"d": "1", "A": "stat:DELIVRD err:000"}), changes)
        # Then the message is delivered (the client told once): it does not wait 48 hours for parts never reported,
        # to be expired and refunded
        assert [c.message.status for c in changes] == [MessageStatus.DELIVERED]


class TestConversations:
    def reply(self, upstream_id: str = "in-1", sender: str = "2348020000000", **upstreams: str) -> InboundSms:
        """`upstreams`: what an upstream that keeps sessions (9bits) adds, its `session_id` and `telco`."""
        return InboundSms(
            upstream="fake",
            upstream_message_id=upstream_id,
            msisdn=sender,
            to="48974",
            text="Yes please",
            received_at="2026-01-02T23:59:00.000000Z",
            **upstreams,
        )

    def receive(self, store: InMemoryStore, sms: InboundSms) -> dict:
        [notification] = self.notifications(store, sms)
        return notification["payload"]

    def notifications(self, store: InMemoryStore, sms: InboundSms) -> list[dict]:
        """The notifications one callback bringing `sms` queues."""
        provider, published = FakeProvider(), []
        provider.inbound = sms
        deps = InboundDependencies(
            accounts=store, inbox=store, publish=published.append, clock=clock, routes=fake_routes, conversations=store
        )
        receive_inbound(provider, callback(), deps)
        return published

    def sent(self, store: InMemoryStore, sending: SendCommand) -> None:
        """Sent and taken by the upstream: a message a handset can have read and replied to."""
        _, deps = send(store, sending)
        for record in deps.dispatch_queue.commands:
            asyncio.run(dispatch(record, dispatch_deps(store, FakeProvider())))

    def test_a_reply_carries_the_session_and_ref_ids_of_the_last_message_sent_to_that_number(self, store):
        # Given two sends to +2348020000000, the later one in session "s-2" with ref_id "r-2"
        self.sent(store, command(1, session_id="s-1", ref_id="r-1"))
        self.sent(store, command(1, session_id="s-2", ref_id="r-2"))
        # When that number replies
        payload = self.receive(store, self.reply())
        # Then the reply is threaded onto the later send
        assert (payload["session_id"], payload["ref_id"]) == ("s-2", "r-2")
        [stored] = store.inbox.values()
        latest = max(store.messages.values(), key=lambda m: m.message_id)
        assert stored.in_reply_to == latest.message_id

    def test_a_reply_continues_the_last_message_it_could_answer_not_a_later_alphanumeric_one(self, store):
        # Given a send from the shortcode in session "s-1", then one from the alphanumeric sender ID "CINEMA"
        store.accounts["7"] = store.accounts["7"].model_copy(update={"senders": ("48974", "CINEMA")})
        self.sent(store, command(1, session_id="s-1", ref_id="r-1"))
        alphanumeric = command(1, session_id="s-2", ref_id="r-2").model_copy(update={"sender": "CINEMA"})
        self.sent(store, alphanumeric)
        # When the number replies (to the shortcode: a handset cannot answer "CINEMA")
        payload = self.receive(store, self.reply())
        # Then the reply is threaded onto the shortcode's message
        assert (payload["session_id"], payload["ref_id"]) == ("s-1", "r-1")

    def test_a_reply_is_not_threaded_onto_a_later_send_still_scheduled_or_queued(self, store):
        # Given a send that went out in session "s-1", then one scheduled for tomorrow and one still queued
        self.sent(store, command(1, session_id="s-1", ref_id="r-1"))
        send(store, command(1, session_id="s-2", ref_id="r-2").model_copy(update={"send_at": NOW + timedelta(days=1)}))
        send(store, command(1, session_id="s-3", ref_id="r-3"))
        # When the number replies
        payload = self.receive(store, self.reply())
        # Then the reply answers the message it got
        assert (payload["session_id"], payload["ref_id"]) == ("s-1", "r-1")

    def test_an_sms_whose_reply_threading_lookup_fails_is_still_stored_for_the_sweeper(self, store, monkeypatch):
        # Given a number the account sent to, and the conversation index failing for a moment (throttled)
        self.sent(store, command(1, session_id="s-1", ref_id="r-1"))
        lookup = store.last_sent_to

        def throttled(*_: object, **__: object) -> None:
            raise RuntimeError("ProvisionedThroughputExceededException on conversation-index")

        monkeypatch.setattr(store, "last_sent_to", throttled)
        # When that number texts STOP through an upstream that does not post a failed callback again
        stop = self.reply().model_copy(update={"text": "STOP"})
        [first] = self.notifications(store, stop)
        # Then the callback succeeds: the SMS is stored and forwarded, as a new conversation (its own session)
        [stored] = store.inbox.values()
        assert stored.text == "STOP"
        assert (first["payload"]["session_id"], first["payload"]["ref_id"]) == (str(stored.inbound_id), None)
        # When an upstream that lost our answer posts it again, the lookup working again
        monkeypatch.setattr(store, "last_sent_to", lookup)
        # Then it is stored once, as first stored, and not forwarded again (the first callback queued it)
        assert self.notifications(store, stop) == []
        assert list(store.inbox.values()) == [stored]
        # And were its first notification still to queue (the not-queued mark there), it is forwarded as first
        # forwarded, under the same webhook id, not threaded anew
        assert stored.upstream_message_id is not None
        store.inbound_sweep_at[inbox_key(stored)] = clock()
        assert self.notifications(store, stop) == [first]

    def test_a_new_conversation_through_an_upstream_with_sessions_is_in_that_upstreams_session(self, store):
        # Given a number the account never sent to, texting in through an upstream that keeps sessions (9bits)
        sms = self.reply(sender="2348039999999", session_id="67543uhn3")
        # Then the client gets the upstream's session, the one a reply must name for the upstream to continue it
        payload = self.receive(store, sms)
        assert (payload["session_id"], payload["ref_id"]) == ("67543uhn3", None)

    def test_a_continued_conversation_stays_in_the_session_the_client_chose(self, store):
        # Given a message the client sent in its session "s-1"
        self.sent(store, command(1, session_id="s-1", ref_id="r-1"))
        # When the reply comes through an upstream that names a session of its own
        payload = self.receive(store, self.reply(session_id="67543uhn3"))
        # Then it continues the client's conversation, with the client's own ref_id
        assert (payload["session_id"], payload["ref_id"]) == ("s-1", "r-1")

    def test_the_upstreams_telco_is_given_where_the_number_plan_names_none(self, store):
        # Given a sender whose network the number plan cannot tell (a US number), and 9bits naming it
        payload = self.receive(store, self.reply(sender="12025550123", telco="mtn"))
        assert payload["telco"] == "mtn"

    def test_the_number_plans_telco_is_kept_whatever_the_upstream_calls_the_network(self, store):
        # Given an upstream that writes the network in words of its own
        payload = self.receive(store, self.reply(telco="Airtel Nigeria"))
        # Then the client gets the telco every report of ours names for that number
        assert payload["telco"] == "airtel"

    def test_a_message_goes_upstream_in_the_session_the_client_named(self, store):
        # Given a client replying in the session an inbound SMS through 9bits named
        provider = FakeProvider()
        _, deps = send(store, command(1, session_id="67543uhn3"))
        # When a dispatcher submits it
        for record in deps.dispatch_queue.commands:
            asyncio.run(dispatch(record, dispatch_deps(store, provider)))
        # Then the upstream is told the session, so that it continues its own
        assert [submit.session_id for submit in provider.submits] == ["67543uhn3"]

    def test_a_number_never_sent_to_starts_a_new_conversation(self, store):
        send(store, command(1, session_id="s-1", ref_id="r-1"))
        payload = self.receive(store, self.reply(sender="2348039999999"))
        assert payload["session_id"] and payload["session_id"] != "s-1"
        assert payload["ref_id"] is None


@pytest.mark.parametrize("callback_url", [None, "https://client.example/batch-7/dlr"])
def test_a_batch_callback_url_is_where_its_delivery_reports_go(store, callback_url):
    _, deps = send(store, command(1, delivery_report=DeliveryReportMode.YES, callback_url=callback_url))
    result = asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
    [change] = result.changes
    notification = dlr_notification(change)
    assert notification is not None
    assert notification["url"] == callback_url


class TestAnnouncementsTheQueueRefused:
    """announce_change: a report's client notification, and the mark its settle check reads when the queue refused
    it (docs/delivery-reports.md, "Nothing lost between the write and your callback")."""

    @staticmethod
    def submitted(store: InMemoryStore, mode: DeliveryReportMode = DeliveryReportMode.YES):
        _, deps = send(store, command(1, delivery_report=mode))
        asyncio.run(dispatch(deps.dispatch_queue.commands[0], dispatch_deps(store, FakeProvider())))
        [message] = store.messages.values()
        return message

    @staticmethod
    def refused(notifications) -> None:
        raise RuntimeError("SQS did not take the notification")

    def test_a_final_change_the_queue_refused_is_marked_and_the_callback_still_fails(self, store):
        from sms_gateway.logic.delivery import announce_change

        message = self.submitted(store)
        change = store.transition(message.key, MessageStatus.DELIVERED, now=NOW)
        with pytest.raises(RuntimeError):
            announce_change(change, self.refused, store, clock=clock)
        assert store.messages[message.key].announce_pending == change.message.sequence
        # And its repeat, queued this time, clears the mark: the settle check need not announce it again
        [repeat] = [store.transition(message.key, MessageStatus.DELIVERED, now=NOW)]
        published: list[object] = []
        announce_change(repeat, published.extend, store, clock=clock)
        assert published == [dlr_notification(change)] and store.messages[message.key].announce_pending is None

    def test_a_change_queued_or_not_final_or_not_asked_for_writes_no_mark(self, store):
        from sms_gateway.logic.delivery import announce_change

        # A final change queued: one publish, no write
        message = self.submitted(store)
        published: list[object] = []
        announce_change(
            store.transition(message.key, MessageStatus.DELIVERED, now=NOW), published.extend, store, clock=clock
        )
        assert len(published) == 1 and store.messages[message.key].announce_pending is None
        assert store.messages[message.key].announced is None
        # A change that is not final: the final one supersedes it, and its settle check is still to come
        store.messages.clear()
        message = self.submitted(store)
        with pytest.raises(RuntimeError):
            announce_change(StatusChange(message=message, changed=True), self.refused, store, clock=clock)
        assert store.messages[message.key].announce_pending is None
        # A batch that asked for no reports publishes nothing
        store.messages.clear()
        message = self.submitted(store, DeliveryReportMode.NONE)
        announce_change(
            store.transition(message.key, MessageStatus.DELIVERED, now=NOW), self.refused, store, clock=clock
        )
        assert store.messages[message.key].announce_pending is None

    def test_a_mark_that_cannot_be_written_leaves_the_queue_s_error_to_fail_the_callback(self, store):
        from sms_gateway.logic.delivery import announce_change

        class MarkFails(InMemoryStore):
            def mark_unannounced(self, key, sequence, *, due):
                raise ConnectionError("DynamoDB unreachable")

        message = self.submitted(store)
        change = store.transition(message.key, MessageStatus.DELIVERED, now=NOW)
        with pytest.raises(RuntimeError, match="SQS did not take"):
            announce_change(change, self.refused, MarkFails(), clock=clock)


class TestReportsTheSweeperAnnounces:
    """A final report whose announcement the notify queue refused is marked for the sweeper too: it goes out minutes
    later, not after the message's settle check (DLR_WAIT_SECONDS), and even when that check already ran."""

    @staticmethod
    def unannounced(store: InMemoryStore, message: Message | None = None) -> StatusChange:
        """A message (a new one when not given) delivered at NOW, whose report's notification the notify queue
        refused."""
        from sms_gateway.logic.delivery import announce_change

        message = message or TestAnnouncementsTheQueueRefused.submitted(store)
        change = store.transition(message.key, MessageStatus.DELIVERED, now=NOW)
        with pytest.raises(RuntimeError):
            announce_change(change, TestAnnouncementsTheQueueRefused.refused, store, clock=clock)
        return change

    @staticmethod
    def sweep(
        store: InMemoryStore, published: list, at: datetime, *, out_of_time=None, by_publish: bool = False
    ) -> SweepOutcome:
        """A sweep run at `at` queueing into `published` (each publish's list as one item when `by_publish`)."""
        return sweep_notifications(
            SweepDependencies(
                inbox=store,
                messages=store,
                publish=published.append if by_publish else published.extend,
                clock=lambda: at,
                out_of_time=out_of_time,
            )
        )

    def test_a_report_the_queue_refused_is_announced_by_a_sweep_once_it_is_due(self, store):
        # Given a final report whose announcement the notify queue refused (the callback failed)
        change = self.unannounced(store)
        # When a sweep runs before it is due, nothing is announced
        published: list = []
        assert self.sweep(store, published, NOW + timedelta(minutes=1)) == SweepOutcome(0, 0, 0, 0)
        assert published == []
        # Then a sweep after it is due queues the notification the settle check would, under the same webhook id,
        # and clears the mark (the settle check then has nothing to announce again)
        assert self.sweep(store, published, NOW + timedelta(minutes=3)) == SweepOutcome(0, 0, 1, 0)
        assert published == [dlr_notification(change)]
        assert published[0]["id"] == f"dlr_{change.message.message_id}_{change.message.sequence}"
        assert store.messages[change.message.key].announce_pending is None
        # And a later sweep announces nothing again
        assert self.sweep(store, published, NOW + timedelta(hours=1)) == SweepOutcome(0, 0, 0, 0)
        assert len(published) == 1

    def test_a_report_announced_at_once_or_by_the_upstream_s_repeat_is_left_alone_by_the_sweep(self, store):
        from sms_gateway.logic.delivery import announce_change

        # Given a report queued at once: then no sweep announces it again
        message = TestAnnouncementsTheQueueRefused.submitted(store)
        published: list = []
        announce_change(
            store.transition(message.key, MessageStatus.DELIVERED, now=NOW), published.extend, store, clock=clock
        )
        assert self.sweep(store, published, NOW + timedelta(hours=1)) == SweepOutcome(0, 0, 0, 0)
        assert len(published) == 1
        # Given a report whose repeat the upstream posted, queued this time: then no sweep announces it again either
        store.messages.clear()
        change = self.unannounced(store)
        announce_change(
            store.transition(change.message.key, MessageStatus.DELIVERED, now=NOW), published.extend, store, clock=clock
        )
        assert self.sweep(store, published, NOW + timedelta(hours=1)) == SweepOutcome(0, 0, 0, 0)
        assert len(published) == 2

    def test_a_sweep_whose_publish_fails_keeps_the_report_for_a_run_after_its_claim(self, store):
        # Given a report left unannounced
        change = self.unannounced(store)
        # When a sweep's publish fails too, the run fails (its alarm) and the mark stays
        with pytest.raises(SweepIncomplete, match="1 of 1 delivery reports"):
            sweep_notifications(
                SweepDependencies(
                    inbox=store,
                    messages=store,
                    publish=TestAnnouncementsTheQueueRefused.refused,
                    clock=lambda: NOW + timedelta(minutes=3),
                )
            )
        assert store.messages[change.message.key].announce_pending == change.message.sequence
        # Then a run while its claim lasts leaves it, and one after the claim announces it
        published: list = []
        assert self.sweep(store, published, NOW + timedelta(minutes=4)) == SweepOutcome(0, 0, 0, 0)
        assert self.sweep(store, published, NOW + timedelta(minutes=9)) == SweepOutcome(0, 0, 1, 0)
        assert published == [dlr_notification(change)]

    def test_a_report_applied_after_the_last_settle_check_read_its_message_is_still_announced(self, store, monkeypatch):
        # Given a message whose last settle check reads it still submitted, and whose final report is applied just
        # then, its announcement refused by the notify queue: the check's expiry write loses, and the check is done
        message = TestAnnouncementsTheQueueRefused.submitted(store)
        [check] = settle_checks([message], now=NOW)
        read, reported = store.get_messages_by_key, []

        def read_then_report(keys, *, consistent):
            found = read(keys, consistent=consistent)
            reported.append(self.unannounced(store, message))
            return found

        monkeypatch.setattr(store, "get_messages_by_key", read_then_report)
        settled = settle(check, settle_deps(store, NOW + timedelta(hours=49)))
        assert (settled.changes, settled.unannounced, settled.check_again_in) == ([], [], None)
        [change] = reported
        # When the sweeper runs once the report is due
        published: list = []
        outcome = self.sweep(store, published, NOW + timedelta(hours=49, minutes=3))
        # Then the client hears of the delivery, and nothing is left marked
        assert outcome.reports_queued == 1 and published == [dlr_notification(change)]
        assert store.messages[message.key].announce_pending is None

    @staticmethod
    def bulk_unannounced(store: InMemoryStore, count: int) -> None:
        """A bulk send of `count` messages, each delivered at NOW, whose reports' notifications the queue refused."""
        from sms_gateway.logic.delivery import announce_change

        _, deps = send(store, command(count, delivery_report=DeliveryReportMode.YES))
        for record in deps.dispatch_queue.commands:
            asyncio.run(dispatch(record, dispatch_deps(store, FakeProvider())))
        for message in list(store.messages.values()):
            change = store.transition(message.key, MessageStatus.DELIVERED, now=NOW)
            with pytest.raises(RuntimeError):
                announce_change(change, TestAnnouncementsTheQueueRefused.refused, store, clock=clock)

    def test_the_reports_a_short_notify_queue_outage_left_unannounced_all_go_out_within_minutes(self, store):
        # Given a bulk send of 500 messages, whose final reports arrive while the notify queue refuses notifications
        # (ten seconds of a brownout at 50 DLRs a second; Twilio and Kannel post each callback once)
        self.bulk_unannounced(store, 500)
        # When the sweeper runs every 2 minutes once they are due, twice
        published: list = []
        for minutes in (3, 5):
            self.sweep(store, published, NOW + timedelta(minutes=minutes))
        # Then the client has every report ("sends you that report 2 to 4 minutes later", docs/delivery-reports.md),
        # not 200 of them a run: a ten-minute brownout of the same send rate (30,000 reports) takes five hours
        assert len(published) == 500

    def test_a_sweep_announces_reports_ten_to_a_publish_and_claims_no_page_once_its_run_is_out_of_time(self, store):
        # Given 250 reports the notify queue refused
        self.bulk_unannounced(store, 250)
        # When a sweep runs that is out of time once it has claimed and announced its first page
        publishes: list = []
        outcome = self.sweep(
            store,
            publishes,
            NOW + timedelta(minutes=3),
            out_of_time=lambda: len(publishes) >= SWEEP_LIMIT // 10,
            by_publish=True,
        )
        # Then it announced one page (SWEEP_LIMIT), ten to a publish (one SendMessageBatch each), and left the rest
        # marked for the next run
        assert outcome.reports_queued == SWEEP_LIMIT
        assert [len(batch) for batch in publishes] == [10] * (SWEEP_LIMIT // 10)
        assert sum(m.announce_pending is not None for m in store.messages.values()) == 250 - SWEEP_LIMIT

    def test_an_inbound_backlog_longer_than_a_run_does_not_leave_the_runs_reports_unannounced(self, store):
        from sms_gateway.domain.ids import new_id
        from sms_gateway.domain.models import StoredInbound

        # Given a notify-queue outage that left 5 final reports unannounced and more SMS unqueued than one run queues
        self.bulk_unannounced(store, 5)
        for n in range(3 * SWEEP_LIMIT):
            inbound = StoredInbound(
                inbound_id=new_id(),
                account_id="7",
                upstream="fake",
                upstream_message_id=f"in-{n}",
                msisdn="+2348030000000",
                to="SHORT",
                text="hi",
                session_id="s",
                received_at=NOW.isoformat(),
            )
            assert store.save_inbound(inbound, notify_due=NOW + timedelta(minutes=2))
        # When a sweep runs whose time runs out once it has queued a page of SMS
        published: list = []
        outcome = self.sweep(
            store, published, NOW + timedelta(minutes=3), out_of_time=lambda: len(published) >= SWEEP_LIMIT
        )
        # Then the run announced the reports too ("sends you that report 2 to 4 minutes later"), not SMS alone
        assert outcome.inbound_queued >= SWEEP_LIMIT
        assert outcome.reports_queued == 5


def part_reporter(
    store: InMemoryStore, message: Message, changes: list[StatusChange], repeats: list[StatusChange]
) -> Callable[[int, MessageStatus], None]:
    """Applies one part's report of `message`, as the simulator posts it, collecting what is announced and repeated."""
    deps = DeliveryDependencies(
        messages=store, accounts=store, clock=clock, on_change=changes.append, on_repeat=repeats.append
    )

    def part(number: int, status: MessageStatus) -> None:
        report = DeliveryReport(upstream="fake", client_ref=message.key.to_ref(), status=status, part=number)
        apply_delivery_report(report, deps, DeliveryOutcome())

    return part


def test_the_other_parts_reports_after_a_long_message_settled_send_no_second_final_report(store):
    # Given a 3-part message the simulator reports reordered (dlr_reorder_rate): its failed last part first
    message = TestMultiPartMessages().submitted(store)
    changes: list[StatusChange] = []
    repeats: list[StatusChange] = []
    part = part_reporter(store, message, changes, repeats)
    part(3, MessageStatus.FAILED)
    # When parts 2 and 1 are then reported delivered, and an older ENROUTE of each part comes after them
    for number in (2, 1):
        part(number, MessageStatus.DELIVERED)
    for number in (1, 2, 3):
        part(number, MessageStatus.SUBMITTED)
    # Then the client is told once that the message failed: "one report for the message, not one per part"; none
    # of these is a repeat of the report that settled it, and "older or conflicting reports send nothing"
    assert [c.message.status for c in changes] == [MessageStatus.FAILED]
    assert repeats == []


def test_a_repeat_of_the_part_report_that_settled_a_long_message_is_announced_again_and_no_other_part_s(store):
    # Given a 3-part message whose last part's failure settled it failed
    message = TestMultiPartMessages().submitted(store)
    changes: list[StatusChange] = []
    repeats: list[StatusChange] = []
    part = part_reporter(store, message, changes, repeats)
    part(3, MessageStatus.FAILED)
    # When another part's first report says it failed too, then the upstream retries the settling report
    part(1, MessageStatus.FAILED)
    part(3, MessageStatus.FAILED)
    # Then only the retry is announced again (its first announcement may have died), under the same change
    assert [c.message.status for c in changes] == [MessageStatus.FAILED]
    assert [(r.changed, r.message.status, r.message.sequence) for r in repeats] == [
        (False, MessageStatus.FAILED, changes[0].message.sequence)
    ]


def test_a_long_message_failed_by_its_parts_keeps_the_failing_parts_error_code_whichever_report_settles_it(store):
    # Given a 3-part message whose parts 1 and 3 were delivered
    message = TestMultiPartMessages().submitted(store)
    changes: list[StatusChange] = []
    for number in (1, 3):
        apply(store, DeliveryReport(upstream="fake", client_ref=message.key.to_ref(), status="delivered", part=number))
    failing = DeliveryReport(
        upstream="fake", client_ref=message.key.to_ref(), status="failed", error_code="001", part=2
    )
    # When part 2's failure (err 001) and a repeat of part 3's delivery come at once (Kannel fetches the DLR URLs in
    # parallel): the failure's part write lands first, then the delivery's callback settles the message from the map
    store.record_part_status(message.key, 2, MessageStatus.FAILED, now=NOW, reported_by="fake")
    apply(store, DeliveryReport(upstream="fake", client_ref=message.key.to_ref(), status="delivered", part=3), changes)
    apply(store, failing, changes)
    # Then the message is failed, once, and says why: the SMSC's error code, as a one-part failure would
    assert [c.message.status for c in changes] == [MessageStatus.FAILED]
    assert store.messages[message.key].error_code == "001"

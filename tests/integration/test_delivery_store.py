"""DynamoStore's delivery items against moto: upstream-id links and held DLRs, part statuses, the conversation index."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from sms_gateway.adapters.dynamodb import DynamoStore
from sms_gateway.domain.ids import new_id
from sms_gateway.domain.models import DeliveryReport, MessageKey
from sms_gateway.domain.status import SUBMIT_UNCONFIRMED, MessageStatus
from sms_gateway.ports import Holding
from tests.integration.test_dynamodb_store import NOW, message_item_key, new_batch, one_message, raw_message

# DynamoDB applies the writes to one item one at a time; moto does too under the `aws` fixture
# (sms_gateway_tools.localstack.moto_server.serialise_dynamodb_writes).


@pytest.fixture
def store(aws: dict[str, str]) -> DynamoStore:
    from sms_gateway.bootstrap import gateway

    return gateway().store  # type: ignore[return-value]


def report(upstream_id: str, status: MessageStatus = MessageStatus.DELIVERED) -> DeliveryReport:
    return DeliveryReport(upstream="at", upstream_message_id=upstream_id, status=status, error_code="000")


def multi_part(store: DynamoStore, parts: int = 3, upstream: str | None = None):
    batch, messages = new_batch(str(new_id()), 1, status=MessageStatus.SUBMITTED)
    batch = batch.model_copy(update={"parts": parts})
    message = messages[0].model_copy(update={"parts": parts, "upstream": upstream})
    store.create_batch(batch, [message])
    return message


class TestUpstreamLinks:
    def test_reports_held_before_the_link_are_handed_to_every_linking_write(self, store):
        # Given a message, and a DLR for upstream id "at-1" that nothing links yet
        message = one_message(store, MessageStatus.QUEUED)
        assert store.find_by_upstream_id("at", "at-1") is None
        assert store.hold_report(report("at-1"), now=NOW) is Holding.HELD
        assert store.hold_report(report("at-1", MessageStatus.SUBMITTED), now=NOW) is Holding.HELD
        # When the dispatcher links the id to the message
        held = store.link_upstream_id("at", "at-1", message.key, now=NOW)
        # Then it gets both held reports, in arrival order, and the id now finds the message
        assert [r.status for r in held] == [MessageStatus.DELIVERED, MessageStatus.SUBMITTED]
        assert held[0].error_code == "000"
        assert store.find_by_upstream_id("at", "at-1") == message.key
        # And a repeated link (the settle check's, after a dispatcher that died before applying them) hands them back
        # again: they stay on the link until it expires
        assert store.link_upstream_id("at", "at-1", message.key, now=NOW) == held

    def test_a_report_held_after_the_link_gets_the_message_key_instead(self, store):
        message = one_message(store, MessageStatus.SUBMITTED)
        store.link_upstream_id("at", "at-2", message.key, now=NOW)
        assert store.hold_report(report("at-2"), now=NOW) == message.key
        assert store.link_upstream_id("at", "at-2", message.key, now=NOW) == []

    def test_links_are_per_upstream_and_expire(self, store):
        message = one_message(store, MessageStatus.SUBMITTED)
        store.link_upstream_id("at", "same-id", message.key, now=NOW)
        assert store.find_by_upstream_id("other", "same-id") is None
        item = store.client.get_item(
            TableName=store.table_name, Key={"pk": {"S": "UPMSG#at#same-id"}, "sk": {"S": "LINK"}}
        )["Item"]
        assert int(item["expires_at"]["N"]) == int((NOW + timedelta(days=7)).timestamp())

    def test_racing_holds_and_a_link_never_lose_a_report(self, store):
        # Given many reports for one id held from several threads while the dispatcher links it
        message = one_message(store, MessageStatus.SUBMITTED)
        returned: list[MessageKey | Holding] = []
        linked: list[DeliveryReport] = []

        def hold(n: int) -> None:
            # (each its own: a repeat of a report held already is not held again)
            distinct = report("at-race", MessageStatus.DELIVERED).model_copy(update={"error_code": str(n)})
            returned.append(store.hold_report(distinct, now=NOW))

        threads = [threading.Thread(target=hold, args=(n,)) for n in range(8)]
        for thread in threads[:4]:
            thread.start()
        linked.extend(store.link_upstream_id("at", "at-race", message.key, now=NOW))
        for thread in threads[4:]:
            thread.start()
        for thread in threads:
            thread.join()
        # Then every report was either handed to the link or answered with the key: none is lost
        assert len(linked) + sum(1 for key in returned if key == message.key) == 8

    def test_an_id_reported_over_and_over_holds_each_report_once_and_the_latest_past_its_bound(self, store):
        from sms_gateway.adapters.dynamodb_delivery import MAX_HELD_REPORTS

        # Given an id AT reports "sent" over and over before its message is linked
        message = one_message(store, MessageStatus.QUEUED)
        sent = report("at-3", MessageStatus.SUBMITTED)
        # (held once: the repeats add nothing, and are not counted held again)
        assert [store.hold_report(sent, now=NOW) for _ in range(5)] == [Holding.HELD, *[Holding.NOTHING_NEW] * 4]
        # Then its link hands back one of them (applying a repeat changes nothing)
        assert store.link_upstream_id("at", "at-3", message.key, now=NOW) == [sent]
        # Given another id's reports, more than a link holds, then its final one twice and a repeat of an earlier one
        others = [
            DeliveryReport(upstream="at", upstream_message_id="at-4", status=MessageStatus.SUBMITTED, error_code=str(n))
            for n in range(MAX_HELD_REPORTS + 3)
        ]
        final = report("at-4", MessageStatus.DELIVERED)
        assert [store.hold_report(other, now=NOW) for other in [*others, final, final, others[0]]] == [
            *[Holding.HELD] * (MAX_HELD_REPORTS + 4),
            Holding.NOTHING_NEW,
            Holding.NOTHING_NEW,
        ]
        # When the id is linked
        held = store.link_upstream_id("at", "at-4", message.key, now=NOW)
        # Then the reports it holds come back in arrival order, then the latest past them: the final report
        assert held == [*others[:MAX_HELD_REPORTS], final]
        # And once linked, a report gets the message's key as before
        assert store.hold_report(final, now=NOW) == message.key

    def test_a_final_report_held_past_the_bound_is_never_displaced_by_a_later_interim_one(self, store):
        from sms_gateway.adapters.dynamodb_delivery import MAX_HELD_REPORTS

        # Given an id with more distinct interim reports than a link holds, then its final report, then another
        # interim one (an upstream's late "buffered" after its "delivered")
        message = one_message(store, MessageStatus.QUEUED)
        interim = [
            DeliveryReport(upstream="at", upstream_message_id="at-5", status=MessageStatus.SUBMITTED, error_code=str(n))
            for n in range(MAX_HELD_REPORTS + 1)
        ]
        final = report("at-5", MessageStatus.DELIVERED)
        late = DeliveryReport(
            upstream="at", upstream_message_id="at-5", status=MessageStatus.SUBMITTED, error_code="late"
        )
        assert [store.hold_report(held, now=NOW) for held in [*interim, final, late]][-2:] == [
            Holding.HELD,
            Holding.NOTHING_NEW,
        ]
        # When the id is linked
        handed = store.link_upstream_id("at", "at-5", message.key, now=NOW)
        # Then the final report is handed back last, applied after the interim ones: the message is delivered, not
        # left submitted to expire and be refunded after its DLR wait
        assert handed[-1] == final
        assert late not in handed


class TestReportsOnlyFromTheCarrier:
    """A report by our reference (the message's key) moves a message only when its upstream carries it."""

    def test_a_status_or_part_report_of_another_upstream_changes_nothing(self, store):
        # Given a two-part message Kannel took
        message = multi_part(store, parts=2, upstream="kannel")
        # When Jasmin reports on it, a part and the whole
        part = store.record_part_status(message.key, 1, MessageStatus.FAILED, now=NOW, reported_by="jasmin")
        whole = store.transition(message.key, MessageStatus.FAILED, now=NOW, upstream="jasmin", reported_by="jasmin")
        # Then neither moves it, and it still names Kannel
        assert part is not None and part.message.part_status == {}
        assert whole is not None and not whole.changed
        assert (whole.message.status, whole.message.upstream) == (MessageStatus.SUBMITTED, "kannel")
        # And Kannel's own reports do
        part = store.record_part_status(message.key, 1, MessageStatus.DELIVERED, now=NOW, reported_by="kannel")
        assert part is not None and part.message.part_status == {"1": "delivered"}
        whole = store.transition(message.key, MessageStatus.DELIVERED, now=NOW, upstream="kannel", reported_by="kannel")
        assert whole is not None and whole.changed

    def test_a_message_left_unconfirmed_before_unconfirmed_submits_named_their_upstream_takes_any_report(self, store):
        # Given a message recorded submitted-unconfirmed as the dispatcher wrote it before 2026-12-05: its claim
        # gone, and no upstream named (Kannel got the submit; its answer was lost)
        message = one_message(store, MessageStatus.QUEUED)
        store.claim_for_dispatch(message.key, now=NOW, lease_seconds=60, upstream="kannel")
        store.transition(message.key, MessageStatus.SUBMITTED, now=NOW, error_code=SUBMIT_UNCONFIRMED)
        # When Kannel's report for it comes (by our reference), the store does not know Kannel carries it
        change = store.transition(
            message.key, MessageStatus.DELIVERED, now=NOW, upstream="kannel", reported_by="kannel"
        )
        # Then it is applied all the same, as before, and the message now names Kannel: only its reports apply next
        assert change is not None and change.changed and change.message.upstream == "kannel"
        refused = store.transition(message.key, MessageStatus.FAILED, now=NOW, reported_by="jasmin")
        assert refused is not None and not refused.changed

    def test_the_upstream_a_dispatcher_is_submitting_to_may_report_before_the_submit_is_recorded(self, store):
        # Given a queued message a dispatcher claimed for Kannel, whose DLR overtakes the dispatcher's status write
        message = one_message(store, MessageStatus.QUEUED)
        store.claim_for_dispatch(message.key, now=NOW, lease_seconds=60, upstream="kannel")
        # Then Jasmin's report is kept out, Kannel's applied, and the message then names Kannel
        assert not store.transition(message.key, MessageStatus.DELIVERED, now=NOW, reported_by="jasmin").changed
        change = store.transition(
            message.key, MessageStatus.DELIVERED, now=NOW, upstream="kannel", reported_by="kannel"
        )
        assert change is not None and change.changed and change.message.upstream == "kannel"

    def test_an_error_code_is_noted_only_on_a_message_in_the_status_its_carrier_reports(self, store):
        # Given a message Jasmin took, and one left submitted-unconfirmed at Jasmin
        taken = one_message(store, MessageStatus.QUEUED)
        submitted = store.transition(taken.key, MessageStatus.SUBMITTED, now=NOW, upstream="jasmin")
        assert submitted is not None
        unconfirmed = one_message(store, MessageStatus.QUEUED)
        store.transition(
            unconfirmed.key, MessageStatus.SUBMITTED, now=NOW, upstream="jasmin", error_code=SUBMIT_UNCONFIRMED
        )
        # When error codes are noted on them for "submitted"
        by_other = store.note_error_code(taken.key, MessageStatus.SUBMITTED, "ESME_RSYSERR", reported_by="kannel")
        for_other_status = store.note_error_code(taken.key, MessageStatus.QUEUED, "X", reported_by="jasmin")
        noted = store.note_error_code(taken.key, MessageStatus.SUBMITTED, "ESME_RTHROTTLED", reported_by="jasmin")
        on_mark = store.note_error_code(unconfirmed.key, MessageStatus.SUBMITTED, "ESME_RSYSERR", reported_by="jasmin")
        # Then only the carrier's, for the status the message is in, is written, without a step of its sequence;
        # the unconfirmed mark (which decides whose reports settle the message) stays
        assert (by_other, for_other_status, noted, on_mark) == (False, False, True, False)
        now_taken, now_unconfirmed = store.get_messages_by_key([taken.key, unconfirmed.key])
        assert (now_taken.error_code, now_taken.status) == ("ESME_RTHROTTLED", MessageStatus.SUBMITTED)
        assert now_taken.sequence == submitted.message.sequence
        assert now_unconfirmed.error_code == SUBMIT_UNCONFIRMED

    def test_an_error_code_is_noted_on_a_final_message_only_where_it_has_none(self, store):
        # Given a long message Kannel took, settled failed by a report that carried no error code
        message = multi_part(store, parts=2, upstream="kannel")
        failed = store.transition(message.key, MessageStatus.FAILED, now=NOW, upstream="kannel", reported_by="kannel")
        assert failed is not None and failed.changed and failed.message.error_code is None
        # When the failing part's code is noted where none is, then another code, and one for another status
        first = store.note_error_code(message.key, MessageStatus.FAILED, "001", reported_by="kannel", absent_only=True)
        second = store.note_error_code(message.key, MessageStatus.FAILED, "002", reported_by="kannel", absent_only=True)
        other = store.note_error_code(
            message.key, MessageStatus.DELIVERED, "003", reported_by="kannel", absent_only=True
        )
        # Then only the first is written, without a step of the message's sequence
        assert (first, second, other) == (True, False, False)
        [now] = store.get_messages_by_key([message.key])
        assert (now.status, now.error_code, now.sequence) == (MessageStatus.FAILED, "001", failed.message.sequence)


class TestPartStatuses:
    def test_parts_move_forward_only_and_a_single_part_message_has_no_part_map(self, store):
        message = multi_part(store)
        after = store.record_part_status(message.key, 2, MessageStatus.DELIVERED, now=NOW)
        assert after is not None and after.message.part_status == {"2": "delivered"} and after.changed
        back = store.record_part_status(message.key, 2, MessageStatus.SUBMITTED, now=NOW)
        assert back is not None and back.message.part_status == {"2": "delivered"} and not back.changed
        again = store.record_part_status(message.key, 2, MessageStatus.DELIVERED, now=NOW)
        assert again is not None and not again.changed
        store.record_part_status(message.key, 1, MessageStatus.FAILED, now=NOW)
        assert store.get_messages(message.account_id, message.reference_id, [message.message_id])[0].part_status == {
            "1": "failed",
            "2": "delivered",
        }
        single = one_message(store, MessageStatus.SUBMITTED)
        assert "part_status" not in (raw_message(store, single.key) or {})

    def test_a_part_named_by_the_smsc_s_own_id_moves_forward_only_as_a_numbered_one(self, store):
        # Given a long message Kannel sent, whose reports name each part by the SMSC's id for it (`%F`)
        message = multi_part(store, upstream="kannel")
        # When part "0a1b.2C:3d" is reported submitted, then delivered, then submitted again (late)
        for status in (MessageStatus.SUBMITTED, MessageStatus.DELIVERED, MessageStatus.SUBMITTED):
            after = store.record_part_status(message.key, "0a1b.2C:3d", status, now=NOW, reported_by="kannel")
        # Then that part is delivered, under its own id
        assert after is not None and after.message.part_status == {"0a1b.2C:3d": "delivered"}

    def test_an_unknown_message_has_no_parts(self, store):
        key = MessageKey(account_id="1", reference_id=2, message_id=3)
        assert store.record_part_status(key, 1, MessageStatus.DELIVERED, now=NOW) is None


class TestConversationIndex:
    def test_the_last_message_to_a_number_is_found_with_its_session_and_ref_ids(self, store):
        account_id = str(new_id())
        first_batch, [first] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
        later_batch, [later] = new_batch(account_id, 1, status=MessageStatus.SUBMITTED)
        store.create_batch(
            first_batch.model_copy(update={"session_id": "s-1"}),
            [first.model_copy(update={"session_id": "s-1", "ref_id": "r-1"})],
        )
        store.create_batch(later_batch, [later.model_copy(update={"session_id": "s-2", "ref_id": "r-2"})])
        found = store.last_sent_to(account_id, later.msisdn)
        assert found is not None
        assert (found.key, found.session_id, found.ref_id, found.sender) == (later.key, "s-2", "r-2", "48974")
        # Another account's messages to the same number are not its conversation
        assert store.last_sent_to(str(new_id()), later.msisdn) is None
        assert store.last_sent_to(account_id, "+2348099999999") is None

    @pytest.mark.parametrize(
        "unsent",
        [MessageStatus.SCHEDULED, MessageStatus.QUEUED, MessageStatus.CANCELLED, MessageStatus.REJECTED],
    )
    def test_a_reply_continues_the_last_message_the_number_could_have_received(self, store, unsent):
        # Given a message delivered to a number, then newer ones to it that never left (scheduled for tomorrow,
        # still queued, cancelled, rejected)
        account_id = str(new_id())
        sent_batch, [sent] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
        store.create_batch(sent_batch, [sent.model_copy(update={"session_id": "s-sent"})])
        for _ in range(2):
            unsent_batch, [never] = new_batch(account_id, 1, status=unsent)
            store.create_batch(unsent_batch, [never.model_copy(update={"session_id": "s-unsent"})])
        # When a reply comes from that number
        found = store.last_sent_to(account_id, sent.msisdn)
        # Then it continues the delivered message's conversation: the handset never got the others
        assert found is not None and (found.key, found.session_id) == (sent.key, "s-sent")

    def test_a_message_from_an_alphanumeric_sender_has_no_conversation_entry(self, store):
        # Given a message from a shortcode, then a newer one from an alphanumeric sender ID to the same number
        account_id = str(new_id())
        numeric_batch, [numeric] = new_batch(account_id, 1, status=MessageStatus.SUBMITTED)
        alpha_batch, [alpha] = new_batch(account_id, 1, status=MessageStatus.SUBMITTED)
        store.create_batch(numeric_batch, [numeric.model_copy(update={"session_id": "s-1"})])
        store.create_batch(
            alpha_batch.model_copy(update={"sender": "DemoCo"}),
            [alpha.model_copy(update={"sender": "DemoCo", "session_id": "s-2"})],
        )
        # Then the alphanumeric one is stored without the index attribute (no index write), the numeric one with it
        assert "conversation" not in (raw_message(store, alpha.key) or {})
        assert "conversation" in (raw_message(store, numeric.key) or {})
        # And a reply from that number continues the conversation it could answer: the shortcode's
        found = store.last_sent_to(account_id, alpha.msisdn)
        assert found is not None and (found.key, found.session_id) == (numeric.key, "s-1")
        # And a number that only ever got alphanumeric messages has no conversation to continue
        only_alpha_batch, [only_alpha] = new_batch(account_id, 1, status=MessageStatus.SUBMITTED)
        only_alpha = only_alpha.model_copy(update={"sender": "DemoCo", "msisdn": "+2348031234567"})
        store.create_batch(only_alpha_batch.model_copy(update={"sender": "DemoCo"}), [only_alpha])
        assert store.last_sent_to(account_id, "+2348031234567") is None

    def test_a_reply_continues_its_shortcode_s_message_however_many_the_account_sent_from_another_one_since(
        self, store
    ):
        # Given a question the account sent to a number from 48974, then its daily OTPs to the same number from 40404
        # (more than twenty of them), all of which reached the handset
        account_id = str(new_id())
        question_batch, [question] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
        store.create_batch(question_batch, [question.model_copy(update={"session_id": "cinema", "ref_id": "c-1"})])
        for _ in range(21):
            otp_batch, [otp] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
            store.create_batch(
                otp_batch.model_copy(update={"sender": "40404"}),
                [otp.model_copy(update={"sender": "40404", "session_id": "otp", "ref_id": "o-1"})],
            )
        # When the number answers the question, texting 48974
        found = store.last_sent_to(account_id, question.msisdn, "48974")
        # Then the reply continues 48974's conversation (docs/delivery-reports.md, "Replies"), as it does after a
        # single OTP, not a new conversation of its own
        assert found is not None and (found.key, found.session_id, found.ref_id) == (question.key, "cinema", "c-1")

    def test_a_reply_finds_its_shortcode_s_message_whether_the_client_wrote_the_sender_with_or_without_a_plus(
        self, store
    ):
        # Given messages to a number from "+48974" and, older, from "40404"
        account_id = str(new_id())
        for sender in ("40404", "+48974"):
            batch, [message] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
            store.create_batch(
                batch.model_copy(update={"sender": sender}), [message.model_copy(update={"sender": sender})]
            )
        # When the number replies to 48974 and to +40404
        to_48974 = store.last_sent_to(account_id, message.msisdn, "48974")
        to_40404 = store.last_sent_to(account_id, message.msisdn, "+40404")
        # Then each reply finds its own shortcode's message: the lookup's filter takes either form
        assert to_48974 is not None and to_48974.sender == "+48974"
        assert to_40404 is not None and to_40404.sender == "40404"


def test_a_reply_continues_the_scheduled_message_that_reached_the_handset_after_a_newer_created_one(store):
    # Given a reminder from 48974 scheduled yesterday for 09:00 (created first), and at 08:00 a one-off message from
    # 48974 to the same number (created later, sent at once and delivered)
    account_id = str(new_id())
    reminder_batch, [reminder] = new_batch(account_id, 1, status=MessageStatus.SCHEDULED)
    store.create_batch(reminder_batch, [reminder.model_copy(update={"session_id": "reminder", "ref_id": "rem-1"})])
    notice_batch, [notice] = new_batch(account_id, 1, status=MessageStatus.DELIVERED)
    store.create_batch(notice_batch, [notice.model_copy(update={"session_id": "notice", "ref_id": "not-1"})])
    # When the schedule releases the reminder at 09:00 and an upstream takes it: the last message the handset got
    store.client.update_item(
        TableName=store.table_name,
        Key=message_item_key(reminder.key),
        UpdateExpression="SET #status = :submitted, status_at = :at",
        ExpressionAttributeNames={"#status": "status"},
        ExpressionAttributeValues={
            ":submitted": {"S": "submitted"},
            ":at": {"M": {"submitted": {"S": (NOW + timedelta(hours=1)).isoformat()}}},
        },
    )
    # And the number answers it, texting 48974
    found = store.last_sent_to(account_id, reminder.msisdn, "48974")
    # Then the reply continues the reminder's conversation (docs/delivery-reports.md: "the last message the account
    # sent to that number"), not the message created later but sent an hour before it
    assert found is not None and (found.session_id, found.ref_id) == ("reminder", "rem-1")

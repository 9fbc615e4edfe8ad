"""The shortcode family's per-number answer to a send: a number is answered Success only when its message goes out."""

from __future__ import annotations

import pytest

from sms_gateway.dialects.shortcode import send_entries
from sms_gateway.domain.status import NOT_QUEUED, MessageStatus
from tests.fakes import InMemoryStore, cinema_store
from tests.unit.test_logic import command, send


@pytest.fixture
def store() -> InMemoryStore:
    return cinema_store()


def stored(store: InMemoryStore, count: int) -> tuple[list, list]:
    sending = command(count)
    send(store, sending)
    messages = sorted(store.messages.values(), key=lambda m: m.message_id)
    readings = [(recipient.msisdn.lstrip("+"), recipient) for recipient in sending.recipients]
    return readings, messages


def test_a_send_that_stands_answers_its_withdrawn_numbers_not_sent_with_their_message_ids(store) -> None:
    # Given a send of three whose queueing failed after a dispatcher took the first: the other two were withdrawn
    # (failed, not_queued, refunded) and the send stands
    readings, messages = stored(store, 3)
    withdrawn = [m.model_copy(update={"status": MessageStatus.FAILED, "error_code": NOT_QUEUED}) for m in messages[1:]]
    # When its answer is written
    entries = send_entries(readings, [messages[0], *withdrawn])
    # Then the one going out is Success, and the withdrawn ones say they were not sent (try again), with their ids
    assert [entry["response-code"] for entry in entries] == [200, 4090, 4090]
    assert [entry["messageid"] for entry in entries] == [str(m.message_id) for m in messages]
    assert all("not sent" in entry["response-details"] for entry in entries[1:])


@pytest.mark.parametrize("status", [MessageStatus.CANCELLED, None], ids=["cancelled", "never-stored"])
def test_a_keyed_send_finished_after_a_cancel_answers_the_numbers_it_does_not_send(store, status) -> None:
    # Given a keyed send whose batch was cancelled before its retry finished it: one message stored and then
    # cancelled, or none stored for the number at all
    readings, messages = stored(store, 2)
    rest = [messages[1].model_copy(update={"status": status})] if status else []
    # When the retry writes its answer
    entries = send_entries(readings, [messages[0], *rest])
    # Then the number not sent to is answered as such (it was a KeyError, a 500, for one never stored)
    assert [entry["response-code"] for entry in entries] == [200, 1005]
    assert "not sent (cancelled)" in entries[1]["response-details"]
    assert ("messageid" in entries[1]) is (status is not None)


@pytest.mark.parametrize(
    ("status", "error_code"),
    [
        (MessageStatus.FAILED, "upstream_rejected"),
        (MessageStatus.REJECTED, None),
        (MessageStatus.EXPIRED, "validity_period_ended"),
    ],
    ids=["failed-upstream", "rejected", "expired"],
)
def test_a_message_a_dispatcher_took_is_answered_as_sent_whatever_became_of_it(store, status, error_code) -> None:
    # Given a send that stands (its queueing failed, or a retry under its key finished it after its request died)
    # whose second message a dispatcher took and its upstream ended before the answer was written
    readings, messages = stored(store, 2)
    ended = messages[1].model_copy(update={"status": status, "error_code": error_code})
    # When its answer is written
    entries = send_entries(readings, [messages[0], ended])
    # Then both are Success with their ids, as the send answered when it took them: what the upstream did comes as
    # a delivery report (it was 1005 "not sent (failed) and not charged", and a retry answered otherwise than the send)
    assert [entry["response-code"] for entry in entries] == [200, 200]
    assert [entry["messageid"] for entry in entries] == [str(m.message_id) for m in messages]


@pytest.mark.parametrize("error_code", ["opted_out", "sender_removed"])
def test_a_message_failed_before_any_upstream_had_it_is_answered_not_sent(store, error_code) -> None:
    # Given a send that stands whose second message was failed before any dispatcher offered it (its number opted
    # out, or its sender was removed, since it was stored)
    readings, messages = stored(store, 2)
    refused = messages[1].model_copy(update={"status": MessageStatus.FAILED, "error_code": error_code})
    # When its answer is written
    entries = send_entries(readings, [messages[0], refused])
    # Then it is answered not sent (and not charged)
    assert [entry["response-code"] for entry in entries] == [200, 1005]
    assert entries[1]["response-details"] == "not sent (failed) and not charged"

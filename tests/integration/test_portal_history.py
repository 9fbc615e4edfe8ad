"""The portal's history reads on moto: batches newest first, search by reference, number and dates, delivery
rates over time and by network, and credit usage; each one scoped to its account and bounded."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sms_gateway.domain.ids import IdGenerator
from sms_gateway.domain.models import Batch, Message, iso
from sms_gateway.domain.msisdn import parse_msisdn
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import InvalidRequest
from sms_gateway.logic import history

NOW = datetime.now(UTC).replace(microsecond=0)
MTN = "+2348030000001"
AIRTEL = "+2348020000002"
GLO = "+2348050000003"
S = MessageStatus


@pytest.fixture
def store(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway

    return gateway().store


@pytest.fixture
def account(aws: dict[str, str]) -> Any:
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import create_account

    created = create_account(name="Cinema Club", senders=["48974"], credits=1000)
    return gateway().store.get_account(created["account_id"])


def add_batch(
    store: Any,
    account_id: str,
    when: datetime,
    outcomes: dict[str, MessageStatus],
    *,
    ref_id: str | None = None,
    price: int = 2,
    status: MessageStatus = S.QUEUED,
    unstored: int = 0,
    send_at: datetime | None = None,
) -> Batch:
    """A batch sent at `when` whose messages ended as `outcomes` says (number -> status); `unstored`: recipients
    more that it counted and charged for but whose messages were never stored (a send undone part-way); `send_at`:
    the time it was scheduled for (made at `when`)."""
    created_at = iso(when)
    scheduled_for = iso(send_at) if send_at is not None else None
    # A generator of its own: the process-wide one never goes back in time, and these batches are back-dated.
    ids = IdGenerator()
    reference_id = ids.new_id(int(when.timestamp() * 1000))
    batch = Batch(
        reference_id=reference_id,
        account_id=account_id,
        sender="48974",
        text="Hello",
        encoding="GSM-7",
        parts=1,
        recipients=len(outcomes) + unstored,
        cost=price * (len(outcomes) + unstored),
        status=status,
        ref_id=ref_id,
        created_at=created_at,
        send_at=scheduled_for,
    )
    messages = []
    for msisdn, outcome in outcomes.items():
        number = parse_msisdn(msisdn)
        messages.append(
            Message(
                message_id=ids.new_id(int(when.timestamp() * 1000)),
                reference_id=reference_id,
                account_id=account_id,
                msisdn=number.e164,
                telco=number.telco,
                network_id=number.network_id,
                sender="48974",
                text="Hello",
                encoding="GSM-7",
                parts=1,
                price=price,
                status=outcome,
                created_at=created_at,
                send_at=scheduled_for,
            )
        )
    store.create_batch(batch, messages)
    return batch


class TestListing:
    def test_batches_come_newest_first_in_pages_and_only_the_accounts_own(self, store, account):
        # Given three batches of the account and one of another account
        old = add_batch(store, account.account_id, NOW - timedelta(days=2), {MTN: S.DELIVERED})
        middle = add_batch(store, account.account_id, NOW - timedelta(days=1), {MTN: S.FAILED})
        new = add_batch(store, account.account_id, NOW, {MTN: S.SUBMITTED, AIRTEL: S.DELIVERED})
        add_batch(store, "someone-else", NOW, {MTN: S.DELIVERED})
        # When the portal lists them two at a time
        first, cursor = history.recent_batches(store, store, account.account_id, limit=2, cursor=None)
        second, end = history.recent_batches(store, store, account.account_id, limit=2, cursor=cursor)
        # Then they come newest first, with their messages counted by status
        assert [row.batch.reference_id for row in first] == [new.reference_id, middle.reference_id]
        assert [row.batch.reference_id for row in second] == [old.reference_id]
        assert end is None
        assert first[0].view.counts == {"submitted": 1, "delivered": 1}
        assert first[0].view.status == "processing" and first[1].view.status == "completed"
        assert first[0].counted_all

    def test_another_accounts_cursor_is_refused(self, store, account):
        add_batch(store, "someone-else", NOW, {MTN: S.DELIVERED})
        add_batch(store, "someone-else", NOW, {MTN: S.DELIVERED})
        _, cursor = store.list_batches("someone-else", limit=1)
        with pytest.raises(InvalidRequest):
            store.list_batches(account.account_id, limit=1, cursor=cursor)

    def test_a_date_range_is_a_key_range(self, store, account):
        add_batch(store, account.account_id, NOW - timedelta(days=3), {MTN: S.DELIVERED})
        inside = add_batch(store, account.account_id, NOW - timedelta(days=1), {MTN: S.DELIVERED})
        add_batch(store, account.account_id, NOW, {MTN: S.DELIVERED})
        found, _ = store.list_batches(
            account.account_id, since=NOW - timedelta(days=2), until=NOW - timedelta(hours=12)
        )
        assert [batch.reference_id for batch in found] == [inside.reference_id]


class TestSearch:
    def test_by_reference_id_message_id_or_client_ref(self, store, account):
        wanted = add_batch(store, account.account_id, NOW - timedelta(hours=1), {MTN: S.DELIVERED}, ref_id="order-7")
        add_batch(store, account.account_id, NOW, {MTN: S.DELIVERED}, ref_id="order-8")
        message_id = store.list_messages(account.account_id, wanted.reference_id)[0][0].message_id
        for reference in (str(wanted.reference_id), str(message_id), "order-7"):
            found = history.search(store, store, account, history.SearchQuery(reference=reference))
            assert [batch.reference_id for batch in found.batches] == [wanted.reference_id], reference
            assert found.complete

    def test_digits_that_name_no_batch_or_message_are_matched_as_a_client_ref_id(self, store, account):
        # Given a batch whose ref_id is digits (a client's order number; the 9bits dialect reads `"ref_id": 128152.0`
        # as "128152"), and another account's batch
        wanted = add_batch(store, account.account_id, NOW, {MTN: S.DELIVERED}, ref_id="128152")
        theirs = add_batch(store, "someone-else", NOW, {MTN: S.DELIVERED}, ref_id="128153")
        # When the portal searches for those digits, Then the batch is found by its ref_id
        found = history.search(store, store, account, history.SearchQuery(reference=" 128152 "))
        assert [batch.reference_id for batch in found.batches] == [wanted.reference_id]
        # And digits that are no id and no ref_id of the account find nothing, another account's ids included
        for reference in ("128153", str(theirs.reference_id), str(theirs.reference_id + 1)):
            assert history.search(store, store, account, history.SearchQuery(reference=reference)).batches == []

    def test_a_reference_outside_the_dates_is_not_found(self, store, account):
        old = add_batch(store, account.account_id, NOW - timedelta(days=3), {MTN: S.DELIVERED})
        query = history.SearchQuery(reference=str(old.reference_id), since=NOW - timedelta(days=1))
        assert history.search(store, store, account, query).batches == []

    def test_another_accounts_reference_finds_nothing(self, store, account):
        theirs = add_batch(store, "someone-else", NOW, {MTN: S.DELIVERED})
        found = history.search(store, store, account, history.SearchQuery(reference=str(theirs.reference_id)))
        assert found.batches == []

    def test_by_number_in_any_form_finds_that_numbers_messages_in_the_window(self, store, account):
        first = add_batch(store, account.account_id, NOW - timedelta(hours=2), {MTN: S.DELIVERED, AIRTEL: S.FAILED})
        add_batch(store, account.account_id, NOW - timedelta(hours=1), {GLO: S.DELIVERED})
        second = add_batch(store, account.account_id, NOW, {MTN: S.SUBMITTED})
        found = history.search(store, store, account, history.SearchQuery(number="08030000001"))
        assert [batch.reference_id for batch in found.batches] == [second.reference_id, first.reference_id]
        assert [message.msisdn for message in found.messages] == [MTN, MTN]
        assert [message.status for message in found.messages] == [S.SUBMITTED, S.DELIVERED]

    def test_number_and_dates_narrow_each_other(self, store, account):
        add_batch(store, account.account_id, NOW - timedelta(days=3), {MTN: S.DELIVERED})
        recent = add_batch(store, account.account_id, NOW - timedelta(hours=1), {MTN: S.DELIVERED})
        query = history.SearchQuery(number=MTN, since=NOW - timedelta(days=1), until=NOW)
        found = history.search(store, store, account, query)
        assert [batch.reference_id for batch in found.batches] == [recent.reference_id]

    def test_dates_find_a_campaign_by_the_day_it_went_out_not_the_day_it_was_made(self, store, account):
        # Given a campaign made 10 days ago, scheduled for yesterday (the batches table says "Sent" yesterday)
        made, went_out = NOW - timedelta(days=10), NOW - timedelta(days=1)
        campaign = add_batch(store, account.account_id, made, {MTN: S.DELIVERED}, ref_id="spring", send_at=went_out)
        add_batch(store, account.account_id, NOW, {MTN: S.DELIVERED}, ref_id="spring")
        since, until = went_out - timedelta(hours=1), went_out + timedelta(hours=1)
        # When it is searched for by number, by the client's ref_id or by its reference_id, within the day it went out
        queries = {
            "number": history.SearchQuery(number=MTN, since=since, until=until),
            "ref_id": history.SearchQuery(reference="spring", since=since, until=until),
            "reference_id": history.SearchQuery(reference=str(campaign.reference_id), since=since, until=until),
        }
        for name, query in queries.items():
            found = history.search(store, store, account, query)
            # Then it is found, and only it
            assert [batch.reference_id for batch in found.batches] == [campaign.reference_id], name
        # And the dates of the day it was made find it too (the batch's page says when it was made)
        made_that_day = history.SearchQuery(reference="spring", since=made - timedelta(hours=1), until=made)
        assert [batch.reference_id for batch in history.search(store, store, account, made_that_day).batches] == [
            campaign.reference_id
        ]

    def test_a_bad_number_or_reversed_dates_are_refused_with_a_reason(self, store, account):
        with pytest.raises(InvalidRequest, match="number to search for is not valid"):
            history.search(store, store, account, history.SearchQuery(number="12ab"))
        with pytest.raises(InvalidRequest, match="after the 'to' date"):
            history.search(store, store, account, history.SearchQuery(since=NOW, until=NOW - timedelta(days=1)))

    def test_the_window_bound_is_reported(self, store, account):
        for minutes in range(3):
            add_batch(store, account.account_id, NOW - timedelta(minutes=minutes), {MTN: S.DELIVERED})
        window = history.read_window(store, store, account.account_id, since=None, max_batches=2)
        assert len(window.batches) == 2 and not window.complete
        window = history.read_window(store, store, account.account_id, since=None, max_messages=1)
        assert not window.complete
        assert history.read_window(store, store, account.account_id, since=None).complete


class TestFigures:
    def test_delivery_rate_per_day_and_per_network(self, store, account):
        # Given yesterday 1 of 2 delivered (MTN delivered, Airtel failed) and today 2 delivered, 1 expired,
        # 1 still on its way, 1 cancelled
        add_batch(store, account.account_id, NOW - timedelta(days=1), {MTN: S.DELIVERED, AIRTEL: S.FAILED})
        add_batch(
            store,
            account.account_id,
            NOW,
            {MTN: S.DELIVERED, GLO: S.DELIVERED, AIRTEL: S.EXPIRED, "+2348030000009": S.SUBMITTED},
        )
        add_batch(store, account.account_id, NOW, {"+2348030000010": S.CANCELLED})
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        # When the figures are drawn per day, in UTC
        days = history.delivery_over_time(window, UTC, now=NOW)
        # Then each day of the window has a point (whole days: today and the 6 before it), and the rate counts
        # only known outcomes
        assert len(days) == history.WINDOW_DAYS
        assert days[-1].label == NOW.strftime("%Y-%m-%d")
        assert days[-2].rate == 0.5
        assert days[-1].rate == pytest.approx(2 / 3)
        assert days[-1].counts == {"delivered": 2, "expired": 1, "submitted": 1, "cancelled": 1}
        assert days[0].total == 0 and days[0].rate is None
        networks = {point.label: point for point in history.delivery_by_network(window)}
        assert networks["mtn"].rate == 1.0 and networks["mtn"].total == 4
        assert networks["airtel"].rate == 0.0 and networks["glo"].rate == 1.0

    def test_the_last_7_days_are_whole_days_in_the_account_s_zone(self, store, account):
        # Given a batch at midnight 6 days ago and one a week ago to the second (on the 8th day back)
        first_day = datetime.combine(NOW.date() - timedelta(days=6), datetime.min.time(), UTC)
        add_batch(store, account.account_id, first_day, {MTN: S.DELIVERED})
        add_batch(store, account.account_id, NOW - timedelta(days=7), {AIRTEL: S.DELIVERED})
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        days = history.delivery_over_time(window, UTC, now=NOW)
        # Then the chart has 7 days, the first of them whole, and the week-old batch is not in it
        assert days[0].label == first_day.strftime("%Y-%m-%d")
        assert [point.delivered for point in days] == [1, 0, 0, 0, 0, 0, 0]
        assert {point.label for point in history.delivery_by_network(window)} == {"mtn"}

    def test_a_scheduled_send_counts_in_the_hour_and_day_it_went_out_not_those_it_was_made_in(self, store, account):
        # Given a campaign made two days ago, scheduled for an hour ago, and delivered
        made, went_out = NOW - timedelta(days=2), NOW - timedelta(hours=1)
        add_batch(store, account.account_id, made, {MTN: S.DELIVERED, AIRTEL: S.DELIVERED}, send_at=went_out)
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        # When the portal draws the delivery rate per day and for the last 24 hours per hour
        days = {point.label: point for point in history.delivery_over_time(window, UTC, now=NOW)}
        last_day = replace(window, since=NOW - timedelta(hours=23))
        hours = {point.label: point for point in history.delivery_over_time(last_day, UTC, now=NOW, hourly=True)}
        # Then its messages count when they were sent (docs/portal.md: "A message counts in the period it was sent")
        assert hours[went_out.strftime("%Y-%m-%d %H:00")].delivered == 2
        assert days[went_out.strftime("%Y-%m-%d")].delivered == 2
        assert days[made.strftime("%Y-%m-%d")].total == 0

    def test_a_campaign_made_before_the_window_and_sent_in_it_is_drawn_when_it_went_out(self, store, account):
        # Given a campaign made 10 days ago, scheduled for yesterday, 1 of its 2 messages delivered
        made, went_out = NOW - timedelta(days=10), NOW - timedelta(days=1)
        add_batch(store, account.account_id, made, {MTN: S.DELIVERED, AIRTEL: S.FAILED}, send_at=went_out, price=3)
        # And a campaign made today for next week
        next_week = NOW + timedelta(days=7)
        add_batch(store, account.account_id, NOW, {GLO: S.SCHEDULED}, send_at=next_week, price=5, status=S.SCHEDULED)
        # When the portal draws the last 7 days
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        days = {point.label: point for point in history.delivery_over_time(window, UTC, now=NOW)}
        networks = {point.label: point for point in history.delivery_by_network(window)}
        # Then the first campaign's messages are drawn on the day they went out, and by network; the second's, not
        # sent yet, in no chart
        assert days[went_out.strftime("%Y-%m-%d")].counts == {"delivered": 1, "failed": 1}
        assert sum(point.total for point in days.values()) == 2
        assert set(networks) == {"mtn", "airtel"}
        assert networks["mtn"].rate == 1.0 and networks["airtel"].rate == 0.0
        # And the week's credits are those charged in it: the second campaign's today, not the first's (charged
        # when it was made, before the window)
        assert [(day.day, day.charged) for day in history.credit_usage(window, UTC)] == [(NOW.date(), 5)]
        assert window.complete

    def test_the_send_path_s_write_of_a_scheduled_batch_finds_it_by_when_it_goes_out(self, store, account):
        # Given a batch scheduled for yesterday, made 10 days ago by the send's own write (its batch and credits in
        # one transaction), its message delivered since
        made, went_out = NOW - timedelta(days=10), NOW - timedelta(days=1)
        template = add_batch(store, "someone-else", made, {MTN: S.DELIVERED}, send_at=went_out)
        batch = template.model_copy(update={"account_id": account.account_id})
        store.create_batch_and_reserve(batch)
        (message,) = store.list_messages("someone-else", template.reference_id)[0]
        store.add_messages(batch, [message.model_copy(update={"account_id": account.account_id})])
        # When the portal reads the last 7 days
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        # Then it is there, drawn on the day it went out; the other account's is not
        assert [found.reference_id for found in window.batches] == [batch.reference_id]
        days = {point.label: point for point in history.delivery_over_time(window, UTC, now=NOW)}
        assert days[went_out.strftime("%Y-%m-%d")].delivered == 1

    def test_hourly_points_cover_the_window(self, store, account):
        add_batch(store, account.account_id, NOW - timedelta(hours=3), {MTN: S.DELIVERED})
        window = history.read_window(store, store, account.account_id, since=NOW - timedelta(hours=5), until=NOW)
        hours = history.delivery_over_time(window, UTC, now=NOW, hourly=True)
        assert len(hours) == 6
        assert [point.delivered for point in hours] == [0, 0, 1, 0, 0, 0]

    def test_hourly_points_across_a_clock_change_end_at_the_current_hour_and_count_each_message_once(
        self, store, account
    ):
        from zoneinfo import ZoneInfo

        # Given an account in Europe/London on the day its clocks go back (01:00 UTC, 25 October 2026), at 12:30
        zone = ZoneInfo("Europe/London")
        now = datetime(2026, 10, 25, 12, 30, tzinfo=UTC)
        # And one message sent in the first 01:00-02:00 (BST), and one ten minutes ago, in the current hour
        add_batch(store, account.account_id, datetime(2026, 10, 25, 0, 30, tzinfo=UTC), {MTN: S.DELIVERED})
        add_batch(store, account.account_id, now - timedelta(minutes=10), {AIRTEL: S.DELIVERED})
        window = history.read_window(store, store, account.account_id, since=now - timedelta(hours=23), until=now)
        # When the last 24 hours are drawn per hour, as the portal's Delivery section draws them
        hours = history.delivery_over_time(window, zone, now=now, hourly=True)
        # Then the chart ends with the current hour (12:00 GMT), and each message is counted once: until now it
        # ended at 11:00 (the message sent ten minutes ago was on no point), and the message of the first 01:00
        # was counted on both 01:00 points (the second 01:00 merges with the first: same wall clock, same zone)
        assert hours[-1].label == "2026-10-25 12:00"
        assert sum(point.delivered for point in hours) == 2
        # And the repeated hour is drawn twice, as the clock showed it: 24 points for the 24 hours
        assert len(hours) == 24
        assert [point.label for point in hours].count("2026-10-25 01:00") == 2
        assert [point.delivered for point in hours if point.label == "2026-10-25 01:00"] == [1, 0]

    def test_hourly_points_across_a_skipped_hour_end_at_the_current_hour_not_one_after(self, store, account):
        from zoneinfo import ZoneInfo

        # Given an account in Europe/London on the day its clocks go forward (01:00 UTC, 29 March 2026), at 13:30
        zone = ZoneInfo("Europe/London")
        now = datetime(2026, 3, 29, 12, 30, tzinfo=UTC)
        add_batch(store, account.account_id, now - timedelta(minutes=10), {AIRTEL: S.DELIVERED})
        window = history.read_window(store, store, account.account_id, since=now - timedelta(hours=23), until=now)
        # When the last 24 hours are drawn per hour
        hours = history.delivery_over_time(window, zone, now=now, hourly=True)
        # Then the chart has the 24 hours the clock showed, 01:00 (skipped) not among them, and ends with the
        # current hour (13:00 BST), its message on it: a wall-clock count of 25 hours drew an hour still to come
        labels = [point.label for point in hours]
        assert len(hours) == 24 and "2026-03-29 01:00" not in labels
        assert labels[-1] == "2026-03-29 13:00" and hours[-1].delivered == 1

    def test_credit_usage_per_day_is_charged_less_refunded(self, store, account):
        add_batch(store, account.account_id, NOW - timedelta(days=1), {MTN: S.DELIVERED, AIRTEL: S.FAILED}, price=3)
        add_batch(store, account.account_id, NOW, {MTN: S.DELIVERED, GLO: S.CANCELLED}, price=2)
        add_batch(store, account.account_id, NOW, {}, price=0, status=S.FAILED)
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        usage = history.credit_usage(window, UTC)
        assert [(day.day, day.charged, day.refunded, day.spent) for day in usage] == [
            (NOW.date(), 4, 2, 2),
            ((NOW - timedelta(days=1)).date(), 6, 3, 3),
        ]

    def test_a_send_undone_after_storing_part_of_its_messages_spent_nothing(self, aws, monkeypatch):
        from sms_gateway.bootstrap import gateway
        from sms_gateway_tools.admin import create_account
        from tests.conftest import FakeContext
        from tests.integration.test_idempotency_and_credits import NUMBERS, fail_the_second_chunk
        from tests.integration.test_send_path import balance, load_function, send_event

        # Given a send of 30 whose second chunk of messages could not be stored: undone, its batch failed and its
        # whole cost given back in one write, the 25 messages it stored failed (not_queued) and given back nothing
        created = create_account(name="Undone", senders=["48974"], credits=100)
        fail_the_second_chunk(monkeypatch)
        answer = load_function("api").handler(
            send_event(created["token"], {"from": "48974", "to": NUMBERS, "message": "thirty of them"}),
            FakeContext(),
        )
        assert answer["statusCode"] == 503, answer
        assert balance(created["account_id"]) == 100
        # When the portal reads the account's credit usage
        store = gateway().store
        window = history.recent_window(store, store, created["account_id"], now=datetime.now(UTC), zone=UTC)
        (day,) = history.credit_usage(window, UTC)
        # Then the day shows the whole cost charged and refunded: nothing spent, as the balance says
        assert window.messages[window.batches[0].reference_id], "some of its messages were stored"
        assert (day.charged, day.refunded, day.spent) == (30, 30, 0)

    def test_a_failed_batch_counts_as_refunded_whole_and_a_withdrawn_message_of_one_that_stands_once(
        self, store, account
    ):
        # Given an undone batch of three of which only one message was stored, and a batch that stands with one
        # message withdrawn (failed, not_queued, refunded on its own) and one delivered
        add_batch(store, account.account_id, NOW, {MTN: S.FAILED}, price=2, status=S.FAILED, unstored=2)
        add_batch(store, account.account_id, NOW, {AIRTEL: S.FAILED, GLO: S.DELIVERED}, price=3)
        # When the usage is read
        window = history.recent_window(store, store, account.account_id, now=NOW, zone=UTC)
        usage = history.credit_usage(window, UTC)
        # Then the undone batch's whole cost came back, and the standing batch's withdrawn message
        assert [(day.charged, day.refunded, day.spent) for day in usage] == [(12, 9, 3)]

    def test_a_batch_whose_messages_the_bound_left_unread_is_not_counted_as_spent(self, store, account):
        # Given a scheduled batch of two that was cancelled (its 4 credits all came back), then a newer batch of two
        # delivered (4 credits spent)
        add_batch(
            store, account.account_id, NOW - timedelta(minutes=5), {MTN: S.CANCELLED}, price=4, status=S.CANCELLED
        )
        add_batch(store, account.account_id, NOW, {AIRTEL: S.DELIVERED, GLO: S.DELIVERED}, price=2)
        # When the window's message bound is reached by the newer batch (as 2000 messages in a week reach it)
        window = history.read_window(store, store, account.account_id, since=NOW - timedelta(days=1), max_messages=2)
        assert not window.complete and len(window.batches) == 2
        usage = history.credit_usage(window, UTC)
        # Then the usage says 4 spent, as the balance moved: not the cancelled batch's cost counted as spent too
        assert [day.spent for day in usage] == [4]

    def test_a_batch_the_bound_cut_part_way_is_left_out_and_an_undone_one_past_it_still_counts_whole(
        self, store, account
    ):
        # Given an undone batch (its 4 credits given back in its own write), a cancelled batch of two (4 credits
        # back), then a newer delivered batch of two (4 credits spent)
        # (all on one UTC day: just after midnight they go on the day before)
        midnight = NOW.replace(hour=0, minute=0, second=0)
        last = NOW if NOW - midnight >= timedelta(minutes=10) else midnight - timedelta(minutes=1)
        add_batch(store, account.account_id, last - timedelta(minutes=9), {MTN: S.FAILED}, price=4, status=S.FAILED)
        cancelled = {MTN: S.CANCELLED, AIRTEL: S.CANCELLED}
        add_batch(store, account.account_id, last - timedelta(minutes=5), cancelled, price=2, status=S.CANCELLED)
        add_batch(store, account.account_id, last, {AIRTEL: S.DELIVERED, GLO: S.DELIVERED}, price=2)
        # When the bound stops the reading at one of the cancelled batch's messages
        window = history.read_window(store, store, account.account_id, since=NOW - timedelta(days=1), max_messages=3)
        assert not window.complete and len(window.messages[window.batches[1].reference_id]) == 1
        usage = history.credit_usage(window, UTC)
        # Then the cut batch is left out (half its refund is unknown), and the undone one counts as charged and
        # refunded whole, as the balance moved
        assert [(day.charged, day.refunded, day.spent) for day in usage] == [(8, 4, 4)]


def test_a_listed_batch_of_a_thousand_long_non_ascii_messages_is_counted_as_the_batches_api_counts_it(store, account):
    from sms_gateway.logic import batches

    # Given a batch of 1000 messages of a 6-part UCS-2 text (about 1.3 KB an item: 1000 of them are over 1 MB),
    # 600 delivered and 400 still on their way, sent before the figures' window (so the listing reads it itself)
    when = NOW - timedelta(days=10)
    ids = IdGenerator()
    reference_id = ids.new_id(int(when.timestamp() * 1000))
    text = "Привет, мир! " * 30
    batch = Batch(
        reference_id=reference_id,
        account_id=account.account_id,
        sender="48974",
        text=text,
        encoding="UCS-2",
        parts=6,
        recipients=1000,
        cost=6000,
        status=S.QUEUED,
        created_at=iso(when),
    )
    messages = []
    for n in range(1000):
        number = parse_msisdn(f"+23480300{n:05d}")
        messages.append(
            Message(
                message_id=ids.new_id(int(when.timestamp() * 1000)),
                reference_id=reference_id,
                account_id=account.account_id,
                msisdn=number.e164,
                telco=number.telco,
                sender="48974",
                text=text,
                encoding="UCS-2",
                parts=6,
                price=6,
                status=S.DELIVERED if n < 600 else S.SUBMITTED,
                created_at=iso(when),
            )
        )
    store.create_batch(batch, messages)
    # When the portal lists the account's batches, and the batches API reads the batch
    rows, _ = history.recent_batches(store, store, account.account_id, limit=25, cursor=None)
    view = batches.batch_view(store, account.account_id, reference_id)
    # Then the listing counts every one of its 1000 messages, and reads the status the API reads (not "completed")
    assert view.counts == {"delivered": 600, "submitted": 400} and view.status == "processing"
    assert (rows[0].view.counts, rows[0].view.status) == (view.counts, view.status)

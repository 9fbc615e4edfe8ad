"""The portal's Messages and Compose pages through the real `api` handler on moto (no browser): sending once per form,
bad input refused with its reasons and nothing charged, the live preview's endpoint and its protections, batches and
search scoped to the account, and the delivery chart's figures."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.portal_client import ORIGIN, PortalClient, PortalResponse, portal_event

COMPOSE = "/portal/compose"
MESSAGES = "/portal/messages"
PREVIEW = "/portal/compose/preview"
MTN = "2348030000001"
AIRTEL = "2348020000002"


@pytest.fixture
def handler(aws: dict[str, str]) -> Any:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def new_account(name: str, sender: str) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name=name, senders=[sender], credits=100)


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    return new_account("Cinema Club", "48974")


@pytest.fixture
def client(handler: Any, account: dict[str, Any]) -> PortalClient:
    client = PortalClient(handler)
    assert client.sign_in(account["username"], account["password"]).status == 303
    return client


def compose_form(client: PortalClient, **fields: str) -> dict[str, str]:
    """The Compose form as the page renders it (its CSRF token and send key), filled in."""
    page = client.get(COMPOSE)
    send_key = re.search(r'name="send_key" value="([^"]+)"', page.body)
    assert send_key, page.body
    return {
        "csrf_token": page.csrf_token(),
        "action": "send",
        "send_key": send_key.group(1),
        "sender": "48974",
        "text": "Hello from the portal",
        "numbers": "",
        "csv": "",
        "send_at": "",
        **fields,
    }


def balance(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    found = gateway().store.get_account(account_id)
    assert found is not None
    return found.credits


def batch_count(account_id: str) -> int:
    from sms_gateway.bootstrap import gateway

    return len(gateway().store.list_batches(account_id, limit=100)[0])


def reference_of(response: PortalResponse) -> str:
    assert response.status == 303, response.text()[:500]
    found = re.search(r"batch=(\d+)", response.location or "")
    assert found, response.location
    return found.group(1)


def preview(client: PortalClient, body: dict[str, Any], *, csrf: str | None, origin: str | None = ORIGIN) -> Any:
    headers = {"content-type": "application/json"}
    if csrf is not None:
        headers["x-csrf-token"] = csrf
    if origin is not None:
        headers["origin"] = origin
    event_response = client.handler(_json_event(client, body, headers))
    return event_response["statusCode"], json.loads(event_response["body"])


def _json_event(client: PortalClient, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    from tests.portal_client import portal_event

    event = portal_event("POST", PREVIEW, cookies=client.cookies, headers=headers, origin=None)
    event["headers"].pop("content-type", None)
    event["headers"].update(headers)
    event["body"] = json.dumps(body)
    return event


@pytest.fixture
def group_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the group lookups (one DynamoDB GetItem each) the request makes."""
    from sms_gateway.bootstrap import gateway

    store_type = type(gateway().store)
    original = store_type.get_group
    calls: list[int] = []

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(store_type, "get_group", counted)
    return calls


# 2,000 distinct group ids: 18 KB of a 256 KB body (a full body holds about 30,000).
MANY_GROUP_IDS = ",".join(f"grp_{n}" for n in range(2000))


class TestSend:
    def test_a_send_charges_once_even_when_the_form_is_submitted_twice(self, client, account):
        form = compose_form(client, numbers=f"{MTN}\n08020000002")
        first = client.post(COMPOSE, form)
        again = client.post(COMPOSE, form)
        reference = reference_of(first)
        assert reference_of(again) == reference
        assert batch_count(account["account_id"]) == 1
        assert balance(account["account_id"]) == 100 - 2
        page = client.get(first.location or "")
        assert page.status == 200
        text = page.text()
        assert f"Batch {reference}" in text and "Hello from the portal" in text
        assert MTN in text and AIRTEL in text and "queued" in text

    def test_a_form_resubmitted_after_its_send_died_and_its_group_was_deleted_shows_the_send_that_stands(
        self, client, account, monkeypatch
    ):
        from sms_gateway.bootstrap import gateway
        from sms_gateway.logic import groups
        from tests.integration.test_idempotency_and_credits import group_of_two, leases_run_out, taken_after_dying

        # Given a form sent to a group of two whose request died right after queueing the send
        group_id = group_of_two(account["account_id"])
        form = compose_form(client, numbers=group_id)
        # And a dispatcher took its messages, and the group was deleted meanwhile
        stored = taken_after_dying(monkeypatch, account["account_id"], lambda: client.post(COMPOSE, form))
        groups.delete_group(gateway().store, account["account_id"], group_id)
        leases_run_out()
        # When the form is submitted again
        again = client.post(COMPOSE, form)
        # Then it shows the send that stands (never "unknown group: nothing was sent"), sent and charged once
        assert reference_of(again) == str(stored.reference_id)
        assert balance(account["account_id"]) == 98

    def test_a_second_click_while_the_first_send_is_still_running_leads_to_that_send(self, client, account):
        from sms_gateway.bootstrap import gateway
        from sms_gateway.domain.models import utc_now
        from sms_gateway.logic.idempotency import SEND_LEASE, fingerprint, new_batch_id

        # Given a form whose first click's send is under way (its key claimed, its batch planned, not done yet)
        form = compose_form(client, numbers=MTN)
        planned = new_batch_id()
        gateway().store.begin(
            account["account_id"],
            f"portal-send:{form['send_key']}",
            fingerprint(COMPOSE, *(form[name] for name in ("sender", "text", "numbers", "csv", "send_at"))),
            now=utc_now(),
            reference_id=planned,
            lease=SEND_LEASE,
        )
        # When the same form is posted again (the browser shows this second answer, not the first)
        again = client.post(COMPOSE, form)
        # Then it leads to the send under way, as a resubmit after it ends does, and sends nothing more
        assert reference_of(again) == str(planned)
        assert batch_count(account["account_id"]) == 0 and balance(account["account_id"]) == 100
        # And that page, while the batch is not stored yet, says the send is under way (not "not found")
        page = client.get(again.location or "")
        assert page.status == 200 and f"still under way as batch {planned}" in page.text()

    def test_the_same_form_changed_after_its_send_is_refused_not_sent(self, client, account):
        form = compose_form(client, numbers=MTN)
        reference_of(client.post(COMPOSE, form))
        changed = client.post(COMPOSE, {**form, "text": "Another text"})
        assert changed.status == 409 and "This form was sent already" in changed.text()
        assert batch_count(account["account_id"]) == 1 and balance(account["account_id"]) == 99

    def test_a_send_that_met_another_at_the_same_moment_says_so_and_the_same_form_then_sends(
        self, client, account, monkeypatch
    ):
        from sms_gateway.logic import idempotency

        # Given a batch sent from Compose, and a new form whose send gets the same new id (two containers' ids met
        # in one millisecond with the same random bits), and again each time it draws another, until it gives up
        # (logic.idempotency.NEW_ID_TRIES): the store refuses it, "batch ... exists already"
        taken = reference_of(client.post(COMPOSE, compose_form(client, numbers=MTN)))
        form = compose_form(client, numbers=AIRTEL, text="Another text")
        with monkeypatch.context() as ids_meet:
            ids_meet.setattr(idempotency, "new_batch_id", lambda: int(taken))
            refused = client.post(COMPOSE, form)
        # Then the page says nothing was sent or charged and to try again (a 503, as the API answers it: it was never
        # sent before)
        assert refused.status == 503
        text = refused.text()
        assert "sent already" not in text
        assert "nothing was sent or charged; try again" in text
        assert batch_count(account["account_id"]) == 1 and balance(account["account_id"]) == 99
        # And the same form, sent again, is sent once
        again = reference_of(client.post(COMPOSE, form))
        assert again != taken
        assert batch_count(account["account_id"]) == 2 and balance(account["account_id"]) == 98

    def test_a_new_render_of_the_form_is_a_new_send(self, client, account):
        reference_of(client.post(COMPOSE, compose_form(client, numbers=MTN)))
        reference_of(client.post(COMPOSE, compose_form(client, numbers=MTN)))
        assert batch_count(account["account_id"]) == 2

    def test_a_line_break_typed_in_the_message_is_charged_as_the_preview_and_the_api_quote_it(self, client, account):
        # Given a 160-character GSM text with one line break: one part, as the 9bits API and the preview quote it
        typed = "a" * 100 + "\n" + "b" * 59
        csrf = client.get(COMPOSE).csrf_token()
        status, answer = preview(client, {"sender": "48974", "text": typed, "numbers": MTN}, csrf=csrf)
        assert status == 200 and answer["parts"] == 1 and answer["total_cost"] == 1
        # When the form is sent as a browser sends a textarea (HTML's form encoding turns each line break into CRLF)
        form = compose_form(client, numbers=MTN, text=typed.replace("\n", "\r\n"))
        reference = reference_of(client.post(COMPOSE, form))
        # Then the send is the one the preview quoted: one part, one credit, the text as typed
        from sms_gateway.bootstrap import gateway

        batch = gateway().store.get_batch(account["account_id"], int(reference))
        assert batch is not None
        assert (batch.parts, batch.cost, batch.text) == (1, 1, typed)
        assert balance(account["account_id"]) == 99

    def test_a_csv_file_sends_to_its_numbers(self, client, account):
        form = compose_form(client, csv=f"name,phone\nAda,{MTN}\nBola,08020000002\n")
        reference_of(client.post(COMPOSE, form))
        assert balance(account["account_id"]) == 98

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({"csv": f"phone\n{MTN}\nnot a number\n\n0803\n"}, "row 3 'not a number'"),
            ({"numbers": "12ab"}, "invalid recipient number"),
            ({"numbers": ""}, "there is no recipient"),
            ({"numbers": MTN, "text": "  "}, "the message is empty"),
            ({"numbers": MTN, "sender": "NOT-MINE"}, "is not registered for this account"),
            ({"numbers": MTN, "send_at": "2020-01-01T10:00"}, "Send at is in the past"),
            ({"numbers": MTN, "send_at": "tomorrow"}, "Send at:"),
        ],
    )
    def test_bad_input_says_what_is_wrong_and_sends_and_charges_nothing(self, client, account, fields, reason):
        response = client.post(COMPOSE, compose_form(client, **fields))
        assert response.status == 400
        assert reason in response.text()
        assert batch_count(account["account_id"]) == 0
        assert balance(account["account_id"]) == 100

    def test_more_than_a_thousand_entries_are_refused_before_any_is_read(self, client, account, group_reads):
        # Given a form whose recipients are 2,000 group ids (each would be one read)
        form = compose_form(client, numbers=MANY_GROUP_IDS)
        # When it is sent
        response = client.post(COMPOSE, form)
        # Then it is refused with the limit, before a single group is read, and nothing is sent or charged
        assert response.status == 400 and "at most 1000 recipients per request" in response.text()
        assert group_reads == []
        assert batch_count(account["account_id"]) == 0 and balance(account["account_id"]) == 100

    def test_a_thousand_and_one_pasted_numbers_are_refused_as_a_csv_of_them_is(self, client, account):
        # Given 1001 entries pasted (the same number: the 9bits `to` counts entries as given, as a CSV counts rows)
        form = compose_form(client, numbers="\n".join([MTN] * 1001))
        # When the form is sent
        response = client.post(COMPOSE, form)
        # Then it is refused, as a CSV of 1001 rows is, and nothing is charged
        assert response.status == 400 and "1001 numbers and group ids were given" in response.text()
        assert batch_count(account["account_id"]) == 0 and balance(account["account_id"]) == 100

    def test_a_csv_with_bad_rows_lists_each_row_with_its_reason(self, client, account):
        response = client.post(COMPOSE, compose_form(client, csv=f"phone\n{MTN}\nnot a number\n\n0803\n"))
        text = response.text()
        assert "row 3 'not a number'" in text and "row 5 '0803'" in text
        # The form comes back as it was sent, so the user can fix it.
        assert "not a number" in response.body.split('name="csv"')[1][:200]

    def test_a_refused_form_comes_back_with_the_text_as_typed_even_its_first_line_break(self, client, account):
        # Given a message whose first line is empty (a browser posts the line break as CR LF), refused for a reason
        # the user then fixes: no recipient yet
        typed = "\nYour code is 1234"
        refused = client.post(COMPOSE, compose_form(client, text=typed.replace("\n", "\r\n")))
        assert refused.status == 400 and "there is no recipient" in refused.text()
        # Then the Message box the page shows again holds the text as typed: what a browser reads of the textarea
        # (HTML drops one line break right after <textarea ...>) is the text, first line break included, so the
        # corrected form sends what the user typed
        assert textarea_as_read(refused.body, "text") == typed

    def test_a_send_with_a_wrong_csrf_token_is_refused_and_changes_nothing(self, client, account):
        form = compose_form(client, numbers=MTN, csrf_token="forged")
        assert client.post(COMPOSE, form).status == 403
        assert batch_count(account["account_id"]) == 0
        assert balance(account["account_id"]) == 100

    def test_a_scheduled_send_shows_its_time(self, client, account):
        from zoneinfo import ZoneInfo

        tomorrow = datetime.now(ZoneInfo("Africa/Lagos")) + timedelta(days=1)
        form = compose_form(client, numbers=MTN, send_at=tomorrow.strftime("%Y-%m-%dT%H:%M"))
        page = client.get(f"{MESSAGES}?batch={reference_of(client.post(COMPOSE, form))}")
        assert "scheduled" in page.text() and tomorrow.strftime("%Y-%m-%d %H:%M") in page.text()

    def test_a_scheduled_send_is_not_announced_as_sent(self, client, account):
        from zoneinfo import ZoneInfo

        tomorrow = datetime.now(ZoneInfo("Africa/Lagos")) + timedelta(days=1)
        form = compose_form(client, numbers=MTN, send_at=tomorrow.strftime("%Y-%m-%dT%H:%M"))
        sent = client.post(COMPOSE, form)
        page = client.get(sent.location or "")
        # The notice on the page the send leads to says it is scheduled, not that it was sent
        notice = page.body.split('<div class="notice" role="status">', 1)[1].split("</div>", 1)[0]
        assert "Sent" not in notice and "scheduled" in notice.lower(), notice
        assert tomorrow.strftime("%Y-%m-%d %H:%M") in notice and "cancel" in notice
        # And the batches list's "Sent" column shows when it goes out, not when it was made
        row = client.get(MESSAGES).body.split(f"batch={reference_of(sent)}", 1)[1].split("</tr>", 1)[0]
        assert f"scheduled for {tomorrow.strftime('%Y-%m-%d %H:%M')}" in row, row


class TestPreview:
    def test_the_preview_counts_parts_and_cost_and_stores_nothing(self, client, account):
        csrf = client.get(COMPOSE).csrf_token()
        status, answer = preview(
            client, {"sender": "48974", "text": "Hi ✓", "numbers": f"{MTN}, {AIRTEL}, 12ab", "csv": ""}, csrf=csrf
        )
        assert status == 200
        assert answer["parts"] == 1 and answer["encoding"] == "UCS-2" and answer["ucs2_characters"] == ["✓"]
        assert answer["recipients"] == 2 and answer["total_cost"] == 2 and answer["balance"] == 100
        assert answer["invalid"][0]["to"] == "12ab" and not answer["would_be_accepted"]
        assert batch_count(account["account_id"]) == 0 and balance(account["account_id"]) == 100

    def test_the_preview_lists_bad_csv_rows(self, client):
        csrf = client.get(COMPOSE).csrf_token()
        status, answer = preview(client, {"sender": "48974", "text": "Hi", "csv": f"{MTN}\nxyz\n"}, csrf=csrf)
        assert status == 200
        assert answer["recipients"] == 1 and answer["csv_problems"][0].startswith("row 2 'xyz'")
        assert not answer["would_be_accepted"]

    def test_the_preview_reads_any_line_break_as_the_send_does(self, client):
        # Given a CSV file saved with CR line breaks (an old Mac export; the script sends the file as read) and a
        # text of 160 GSM characters whose line break came as CR LF
        csrf = client.get(COMPOSE).csrf_token()
        body = {"sender": "48974", "text": "a" * 100 + "\r\n" + "b" * 59, "csv": f"phone\r{MTN}\r{AIRTEL}\r"}
        # When the page asks for the preview
        status, answer = preview(client, body, csrf=csrf)
        # Then it quotes what Send sends: both numbers, and the line break as one character
        assert status == 200, answer
        assert (answer["recipients"], answer["parts"], answer["csv_problems"]) == (2, 1, [])

    def test_the_preview_refuses_a_missing_or_wrong_csrf_token_another_origin_and_no_session(self, client, handler):
        body = {"sender": "48974", "text": "Hi", "numbers": MTN}
        csrf = client.get(COMPOSE).csrf_token()
        assert preview(client, body, csrf=None)[0] == 403
        assert preview(client, body, csrf="forged")[0] == 403
        assert preview(client, body, csrf=csrf, origin="https://evil.example")[0] == 403
        assert preview(PortalClient(handler), body, csrf=csrf)[0] == 401
        assert preview(client, body, csrf=csrf)[0] == 200

    def test_more_than_a_thousand_entries_are_refused_before_any_is_read(self, client, group_reads):
        # Given the preview (run on every pause in typing) of 2,000 group ids
        csrf = client.get(COMPOSE).csrf_token()
        # When it is asked for
        status, answer = preview(client, {"sender": "48974", "text": "Hi", "numbers": MANY_GROUP_IDS}, csrf=csrf)
        # Then it answers 400 with the limit and reads no group
        assert status == 400 and "at most 1000 recipients per request" in answer["message"]
        assert group_reads == []

    def test_a_sender_of_another_account_is_refused(self, client):
        csrf = client.get(COMPOSE).csrf_token()
        status, answer = preview(client, {"sender": "55555", "text": "Hi", "numbers": MTN}, csrf=csrf)
        assert status == 400 and "not registered" in answer["message"]


def deliver(account_id: str, reference: str) -> None:
    """What the dispatcher and the upstream's DLR do, directly on the store."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.status import MessageStatus

    store = gateway().store
    for message in store.list_messages(account_id, int(reference))[0]:
        store.transition(message.key, MessageStatus.SUBMITTED, now=datetime.now(UTC))
        store.transition(message.key, MessageStatus.DELIVERED, now=datetime.now(UTC))


def sent_day(account_id: str, reference: str) -> str:
    """The date a batch was made on, in its account's time zone."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import from_iso
    from sms_gateway.domain.zones import account_zone

    store = gateway().store
    account, batch = store.get_account(account_id), store.get_batch(account_id, int(reference))
    assert account is not None and batch is not None
    return from_iso(batch.created_at).astimezone(account_zone(account.timezone)).strftime("%Y-%m-%d")


class TestMessages:
    def test_batches_messages_and_the_delivery_chart(self, client, account):
        reference = reference_of(client.post(COMPOSE, compose_form(client, numbers=MTN)))
        deliver(account["account_id"], reference)
        page = client.get(MESSAGES)
        assert page.status == 200
        text = page.text()
        assert reference in text and "completed" in text and "1 delivered" in text
        assert 'id="credit-balance">99<' in page.body
        chart = page.body.split('id="chart-days"')[1].split("</svg>")[0]
        assert "1 of 1 delivered (100%)" in chart
        networks = page.body.split('id="chart-networks"')[1].split("</svg>")[0]
        assert 'data-label="mtn" data-rate="100%"' in networks

    def test_search_by_number_reference_and_date(self, client, account):
        def results(query: str) -> str:
            """The search results section only: the recent batches below it list every batch."""
            return client.get(f"{MESSAGES}?{query}").body.split('id="results"')[1].split("</section>")[0]

        first = reference_of(client.post(COMPOSE, compose_form(client, numbers=MTN)))
        second = reference_of(client.post(COMPOSE, compose_form(client, numbers=AIRTEL)))
        by_number = results("number=08030000001")
        assert first in by_number and second not in by_number
        by_reference = results(f"reference={second}")
        assert second in by_reference and first not in by_reference
        assert "No batches" in results("from=2020-01-01&to=2020-01-31")
        # The day the batch was sent on in the account's time zone, as the page reads the dates it is given (the UTC
        # date is another day for an hour or more of every day: 23:00 to 24:00 UTC in Lagos)
        today = sent_day(account["account_id"], second)
        assert second in results(f"from={today}&to={today}")
        # The ends of the calendar are dates too: everything, not a 500
        assert client.get(f"{MESSAGES}?from=0001-01-01&to=9999-12-31").status == 200
        everything = results("from=0001-01-01&to=9999-12-31")
        assert first in everything and second in everything

    def test_older_batches_keep_the_search_the_page_shows(self, client, account):
        from sms_gateway.bootstrap import gateway
        from sms_gateway.dialects.portal.messages_view import BATCHES_PER_PAGE
        from sms_gateway.domain.status import MessageStatus
        from tests.integration.test_portal_history import add_batch

        # Given more batches than a page lists, the oldest of them to a number searched for
        now = datetime.now(UTC)
        oldest = add_batch(
            gateway().store, account["account_id"], now - timedelta(hours=2), {f"+{MTN}": MessageStatus.DELIVERED}
        )
        for minutes in range(BATCHES_PER_PAGE):
            add_batch(
                gateway().store,
                account["account_id"],
                now - timedelta(minutes=minutes),
                {f"+{AIRTEL}": MessageStatus.DELIVERED},
            )
        page = client.get(f"{MESSAGES}?number=08030000001")
        assert str(oldest.reference_id) in page.body.split('id="results"')[1].split("</section>")[0]
        # When the user follows "Older batches" below the search results
        older = re.search(r'<a href="([^"]+)">Older batches</a>', page.body)
        assert older, page.body
        following = client.get(older.group(1).replace("&amp;", "&"))
        # Then the search is still filled in and its results still shown, with the next page of batches
        assert 'value="08030000001"' in following.body
        assert str(oldest.reference_id) in following.body.split('id="results"')[1].split("</section>")[0]
        assert str(oldest.reference_id) in following.body.split('id="batches"')[1]

    def test_a_bad_search_is_refused_with_its_reason(self, client):
        response = client.get(f"{MESSAGES}?number=12ab")
        assert response.status == 400 and "number to search for is not valid" in response.text()
        response = client.get(f"{MESSAGES}?from=yesterday")
        assert response.status == 400 and "is not a date" in response.text()

    def test_a_search_whose_query_is_not_utf8_is_refused_not_read_garbled(self, client, handler):
        # Given a search link whose percent-escape is not UTF-8 (ISO-8859-1's 'Caf%E9'), which API Gateway's
        # queryStringParameters decode to a replacement character
        event = portal_event("GET", MESSAGES, cookies=client.cookies, query={"reference": "Caf\ufffd"})
        event["rawQueryString"] = "reference=Caf%E9"
        # When it is opened
        response = handler(event)
        # Then it is a 400 page that says so, not a search for other text
        assert response["statusCode"] == 400, response
        assert response["headers"]["Content-Type"].startswith("text/html")
        assert "not UTF-8" in response["body"]

    def test_another_accounts_batch_is_exactly_as_missing(self, client, handler, account):
        other = new_account("Other Club", "55555")
        other_client = PortalClient(handler)
        other_client.sign_in(other["username"], other["password"])
        theirs = other_client.post(COMPOSE, compose_form(other_client, sender="55555", numbers=MTN))
        reference = reference_of(theirs)
        never = str(int(reference) + 1)
        seen = client.get(f"{MESSAGES}?batch={reference}")
        missing = client.get(f"{MESSAGES}?batch={never}")
        assert seen.status == missing.status == 404
        assert "Hello from the portal" not in seen.body
        assert seen.text().replace(reference, "ID") == missing.text().replace(never, "ID")
        # Nor does a search by its reference show it.
        results = client.get(f"{MESSAGES}?reference={reference}").body.split('id="results"')[1]
        assert reference not in results.split("</section>")[0]

    def test_signed_out_visitors_are_sent_to_sign_in(self, handler):
        for path in (MESSAGES, COMPOSE):
            response = PortalClient(handler).get(path)
            assert response.status == 303 and response.location == "/portal/login"


def schedule(client: PortalClient, numbers: str, *, sender: str = "48974") -> str:
    """Given a send from Compose scheduled for tomorrow: the batch's page."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    sent = client.post(COMPOSE, compose_form(client, sender=sender, numbers=numbers, send_at=tomorrow))
    return f"{MESSAGES}?batch={reference_of(sent)}"


def stored_batch(account_id: str, page: str) -> tuple[str, set[str]]:
    """The batch's stored status and its messages' statuses."""
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    reference_id = int(page.rsplit("=", 1)[1])
    batch = store.get_batch(account_id, reference_id)
    assert batch is not None
    return str(batch.status), {str(m.status) for m in store.list_messages(account_id, reference_id)[0]}


CANCEL_FORM = 'name="action" value="cancel-batch"'


class TestCancel:
    def test_a_scheduled_send_is_cancelled_from_its_page_and_its_credits_refunded(self, aws, client, account):
        from tests.integration.test_batches_dialect import schedule_names

        # Given a send of two scheduled for tomorrow (2 credits of 100 taken), whose page offers to cancel it
        page = schedule(client, f"{MTN}\n{AIRTEL}")
        assert balance(account["account_id"]) == 98 and len(schedule_names(aws)) == 1
        assert CANCEL_FORM in client.get(page).body
        # When its Cancel form is sent
        response = client.submit(page, "cancel-batch")
        # Then the page says it is cancelled, with the credits refunded and the balance after
        assert response.status == 200, response.text()[:2000]
        text = response.text()
        assert "is cancelled: 2 credits were refunded" in text and "balance is now 100 credits" in text
        # And the batch and its messages are cancelled, the credits back, the schedule gone, the form too
        assert stored_batch(account["account_id"], page) == ("cancelled", {"cancelled"})
        assert balance(account["account_id"]) == 100
        assert schedule_names(aws) == []
        assert CANCEL_FORM not in response.body and CANCEL_FORM not in client.get(page).body

    def test_a_cancelled_send_shows_its_credits_refunded_not_spent(self, client, account):
        # Given a send of two scheduled for tomorrow (2 credits), cancelled: the balance has the 2 credits back
        page = schedule(client, f"{MTN}\n{AIRTEL}")
        assert client.submit(page, "cancel-batch").status == 200
        assert balance(account["account_id"]) == 100
        # When the user looks at the batch and at the list of batches
        detail, listing = client.get(page).body, client.get(MESSAGES).body
        # Then the batch reads as costing nothing now, with what was charged and refunded, and so does each message
        assert "<dt>Cost</dt><dd>0 credits (2 charged, 2 refunded)</dd>" in detail
        assert detail.count("<td>0 (1 refunded)</td>") == 2
        assert "<td>0 (2 refunded)</td>" in listing.split('id="batches"')[1]

    def test_a_cancelled_send_cancelled_again_is_refused_and_refunds_nothing_more(self, client, account):
        page = schedule(client, MTN)
        assert client.submit(page, "cancel-batch").status == 200
        again = client.submit(page, "cancel-batch")
        assert again.status == 409 and "only a scheduled batch can be cancelled; this one is cancelled" in again.text()
        assert balance(account["account_id"]) == 100

    def test_a_cancel_form_sent_again_shows_the_refund_of_the_first_send_of_it(self, client, account):
        # Given a send of two scheduled for tomorrow (2 credits), whose page's Cancel form was sent, and cancelled
        # and refunded, but whose answer the browser never showed (a dropped connection, a reload of the answer)
        page = schedule(client, f"{MTN}\n{AIRTEL}")
        drawn = client.get(page)
        form = {"csrf_token": drawn.csrf_token(), "action": "cancel-batch", **drawn.hidden_fields("cancel-batch")}
        assert client.post(page, form).status == 200
        # When the same form is sent again
        again = client.post(page, form)
        # Then the page says what that cancel did, 2 credits refunded, not 409 "this one is cancelled"
        assert again.status == 200, again.text()[:2000]
        assert "is cancelled: 2 credits were refunded" in again.text()
        # And nothing moved twice; the same form sent for another batch is refused, and changes nothing
        assert balance(account["account_id"]) == 100
        other = schedule(client, MTN)
        refused = client.post(other, form)
        assert refused.status == 409, refused.text()[:2000]
        assert stored_batch(account["account_id"], other) == ("scheduled", {"scheduled"})

    def test_a_cancel_form_that_failed_unexpectedly_sent_again_at_once_shows_the_refund(self, client, account):
        from unittest.mock import Mock

        from sms_gateway.bootstrap import gateway

        # Given a send of two scheduled for tomorrow (2 credits), whose Cancel form's send failed unexpectedly (a
        # DynamoDB error) once the batch was cancelled and refunded, before the cancel claimed its answer
        page = schedule(client, f"{MTN}\n{AIRTEL}")
        drawn = client.get(page)
        form = {"csrf_token": drawn.csrf_token(), "action": "cancel-batch", **drawn.hidden_fields("cancel-batch")}
        with pytest.MonkeyPatch.context() as failing:
            failing.setattr(gateway().store, "claim_cancel_answer", Mock(side_effect=RuntimeError("throttled")))
            assert client.post(page, form).status == 500
        # When the user sends the same form again at once
        again = client.post(page, form)
        # Then the page says what the cancel did (not 409 "still being carried out" for 90 s), nothing moved twice
        assert again.status == 200, again.text()[:2000]
        assert "is cancelled: 2 credits were refunded" in again.text()
        assert balance(account["account_id"]) == 100

    def test_a_cancelled_send_is_not_listed_as_sent_at_its_schedule_time(self, client, account):
        # Given a send scheduled for tomorrow, cancelled from its page
        page = schedule(client, MTN)
        reference = page.rsplit("=", 1)[1]
        sent_cell = client.get(MESSAGES).body.split(f"batch={reference}", 1)[1].split("</td>", 2)[1]
        assert "scheduled for" in sent_cell, sent_cell
        when = sent_cell.split("scheduled for", 1)[1].strip()
        assert client.submit(page, "cancel-batch").status == 200
        # When the batches list is read
        row = client.get(MESSAGES).body.split(f"batch={reference}", 1)[1].split("</tr>", 1)[0]
        sent_cell = row.split("</td>", 2)[1]
        # Then its "Sent" column does not give tomorrow's time bare, as when a batch that never went out was sent
        assert "scheduled for" in sent_cell or when not in sent_cell, sent_cell
        assert "not sent" in sent_cell, sent_cell

    def test_another_accounts_batch_cannot_be_cancelled(self, aws, client, handler, account):
        from tests.integration.test_batches_dialect import schedule_names

        # Given another account's scheduled send
        other = new_account("Other Club", "55555")
        other_client = PortalClient(handler)
        other_client.sign_in(other["username"], other["password"])
        theirs = schedule(other_client, MTN, sender="55555")
        # When this account posts the Cancel form to its page (with this account's own valid CSRF token)
        response = client.submit(theirs, "cancel-batch", from_page=MESSAGES)
        # Then it is refused as a batch that does not exist, and nothing of theirs changed
        assert response.status == 404 and "no batch with reference_id" in response.text()
        assert stored_batch(other["account_id"], theirs) == ("scheduled", {"scheduled"})
        assert balance(other["account_id"]) == 99 and len(schedule_names(aws)) == 1

    def test_a_released_send_cannot_be_cancelled(self, aws, client, account):
        from tests.conftest import load_event

        # Given a scheduled send whose schedule fired: released, its message queued and charged
        page = schedule(client, MTN)
        event = load_event("scheduler-release-batch.json")
        event.update(account_id=account["account_id"], reference_id=int(page.rsplit("=", 1)[1]))
        load_function("scheduled_dispatch").handler(event, FakeContext())
        assert CANCEL_FORM not in client.get(page).body
        # When the Cancel form is sent anyway (a page loaded before the release)
        response = client.submit(page, "cancel-batch")
        # Then it is refused, saying why, and nothing changed
        assert response.status == 409, response.text()[:2000]
        assert "only a scheduled batch can be cancelled; this one is queued" in response.text()
        assert stored_batch(account["account_id"], page) == ("queued", {"queued"})
        assert balance(account["account_id"]) == 99

    @pytest.mark.parametrize("csrf", [None, "forged"])
    def test_a_cancel_without_the_right_csrf_token_is_refused_and_changes_nothing(self, aws, client, account, csrf):
        from tests.integration.test_batches_dialect import schedule_names

        page = schedule(client, MTN)
        form = {"action": "cancel-batch", **({"csrf_token": csrf} if csrf else {})}
        assert client.post(page, form).status == 403
        assert stored_batch(account["account_id"], page) == ("scheduled", {"scheduled"})
        assert balance(account["account_id"]) == 99 and len(schedule_names(aws)) == 1


class TestOptedOut:
    def test_an_opted_out_number_is_shown_in_the_preview_and_left_out_of_the_send(self, client, account):
        from sms_gateway.bootstrap import gateway
        from sms_gateway.domain.optouts import OptOut

        gateway().store.opt_out(
            OptOut(
                account_id=account["account_id"],
                sender="48974",
                msisdn=f"+{AIRTEL}",
                keyword="STOP",
                at="2026-01-01T00:00:00Z",
            )
        )
        csrf = client.get(COMPOSE).csrf_token()
        status, answer = preview(client, {"sender": "48974", "text": "Hi", "numbers": f"{MTN},{AIRTEL}"}, csrf=csrf)
        assert status == 200 and answer["recipients"] == 1 and answer["total_cost"] == 1
        assert answer["opted_out"][0]["to"] == AIRTEL and answer["would_be_accepted"]
        sent = client.post(COMPOSE, compose_form(client, numbers=f"{MTN},{AIRTEL}"))
        page = client.get(sent.location or "")
        assert "1 recipients were left out: they opted out of this sender." in page.text()
        assert balance(account["account_id"]) == 99


def textarea_as_read(page: str, name: str) -> str:
    """The value a browser gives the textarea `name` of `page`, read as HTML's parser reads it: every CR LF and lone CR
    of the page is an LF, the one line break right after the start tag is dropped, then character references are
    decoded."""
    from html import unescape

    found = re.search(rf'<textarea[^>]* name="{name}"[^>]*>(.*?)</textarea>', page, re.DOTALL)
    assert found, page
    content = found.group(1).replace("\r\n", "\n").replace("\r", "\n")
    return unescape(content.removeprefix("\n"))


def test_the_csv_picker_is_shown_only_by_the_script_that_reads_the_file(client):
    page = client.get(COMPOSE).body
    assert '<div id="csv-block" hidden>' in page and "compose.js" in page

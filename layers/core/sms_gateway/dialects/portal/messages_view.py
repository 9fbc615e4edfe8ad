"""The portal's Messages page as it is drawn: recent batches and their messages (status, parts, cost), search by
number, reference and date, delivery-rate charts over time and by network, and the credit balance and usage.
Imported when the page is first served (messages.py registers it), so the api's cold start does not pay for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

from aws_lambda_powertools.event_handler import Response

from sms_gateway.dialects.common import cancel, status_for, under_claim
from sms_gateway.dialects.portal.charts import figures_table, rate_by_network, rate_over_time
from sms_gateway.dialects.portal.compose import COMPOSE_PATH
from sms_gateway.dialects.portal.framework import (
    Notice,
    PageContext,
    asset_url,
    form_key_input,
    html_response,
    local_time,
    new_form_key,
    page_html,
    run_form_once,
)
from sms_gateway.dialects.portal.markup import attrs, esc, section, table
from sms_gateway.dialects.portal.messages import MESSAGES_PATH
from sms_gateway.domain.models import Account, Batch, KeyClaim, Message, StoredAnswer, utc_now
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import Conflict, GatewayError, InvalidRequest, KeyInProgress, KeyReused, NotFound
from sms_gateway.logic import batches, history
from sms_gateway.logic.idempotency import SEND_LEASE

BATCHES_PER_PAGE = 25
MESSAGES_PER_PAGE = 100
TEXT_SHOWN = 60
# The query flag of a batch's page that Compose leads to while the send making the batch is still under way.
UNDER_WAY = "under_way"
# The once-per-form key of a batch's Cancel form (cancel_batch): sent again, the form shows what its first send did.
CANCEL_KEY_FIELD = "cancel_key"
# The search form's fields (a GET form: the search is in the page's query string).
SEARCH_FIELDS = ("number", "reference", "from", "to")


def messages_page(ctx: PageContext) -> str | Response[Any]:
    from sms_gateway.domain.zones import account_zone

    zone = account_zone(ctx.account.timezone)
    try:
        if ctx.query.get("batch"):
            return stylesheet() + batch_detail(ctx, ctx.query["batch"], zone)
        return stylesheet() + overview(ctx, zone)
    except GatewayError as error:
        # A bad search or cursor, or a batch that is not this account's (404, exactly as one that never existed):
        # said on the page with its status, nothing else shown.
        back = f'<p><a href="{MESSAGES_PATH}">Back to messages</a></p>'
        return html_response(
            status_for(error), page_html(title=ctx.page.title, body=back, ctx=ctx.but(error=error.message))
        )


def stylesheet() -> str:
    """The Messages and Compose pages' own rules (a stylesheet link is allowed in the body, and by the CSP)."""
    return f'<link rel="stylesheet" href="{esc(asset_url("pages.css"))}">'


# ------------------------------------------------------------------ overview


def overview(ctx: PageContext, zone: tzinfo) -> str:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    account = ctx.account
    now = utc_now()
    window = history.recent_window(store, store, account.account_id, now=now, zone=zone)
    parts = [
        section("Credits", credits_html(account, window, zone), id_="credits"),
        section("Search", search_form(ctx.query), id_="search"),
    ]
    query = search_query(ctx.query, zone)
    if not query.empty:
        parts.append(section("Search results", search_results(account, query, zone), id_="results"))
    rows, cursor = history.recent_batches(
        store, store, account.account_id, limit=BATCHES_PER_PAGE, cursor=ctx.query.get("cursor") or None, known=window
    )
    # The next page keeps the search the page shows (its form and results stay as they were).
    searched = {name: ctx.query.get(name) for name in SEARCH_FIELDS}
    more = f'<p><a href="{esc(_url(cursor=cursor, **searched))}">Older batches</a></p>' if cursor else ""
    parts.append(section("Recent batches", batches_table(rows, zone) + more, id_="batches"))
    parts.append(section("Delivery rate", delivery_html(window, zone, now), id_="delivery"))
    return "\n".join(parts)


def window_note(window: history.Window) -> str:
    bound = (
        f"the last {history.WINDOW_DAYS} days, at most {history.MAX_WINDOW_BATCHES} batches and "
        f"{history.MAX_WINDOW_MESSAGES} messages"
    )
    if window.complete:
        return f'<p class="hint">Figures cover {bound}.</p>'
    return f'<p class="hint"><strong>Figures cover only part of the period:</strong> they stop at {bound}.</p>'


def credits_html(account: Account, window: history.Window, zone: tzinfo) -> str:
    usage = history.credit_usage(window, zone)
    rows = [[esc(day.day.isoformat()), str(day.charged), str(day.refunded), str(day.spent)] for day in usage]
    spent = sum(day.spent for day in usage)
    return (
        f'<p class="balance">Balance: <strong id="credit-balance">{account.credits}</strong> credits. '
        f"Spent in the last {history.WINDOW_DAYS} days: <strong>{spent}</strong>.</p>"
        + table(["Day", "Charged", "Refunded", "Spent"], rows, empty="No credits used in this period.")
        + window_note(window)
    )


def delivery_html(window: history.Window, zone: tzinfo, now: datetime) -> str:
    days = history.delivery_over_time(window, zone, now=now)
    # The same messages, the last 24 hours of them per hour (periods before the start are not drawn).
    hours = history.delivery_over_time(replace(window, since=now - timedelta(hours=23)), zone, now=now, hourly=True)
    networks = history.delivery_by_network(window)
    rule = (
        "Delivery rate = delivered / (delivered + failed + expired + rejected); messages still on their way "
        "or cancelled have no outcome yet and are counted under Other."
    )
    return (
        f'<p class="hint">{esc(rule)}</p>'
        + "<h3>Per day</h3>"
        + rate_over_time(days, chart_id="chart-days", title=f"Delivery rate per day, last {history.WINDOW_DAYS} days")
        + figures_table(days, first_header="Day", empty="No messages in this period.")
        + "<h3>Last 24 hours, per hour</h3>"
        + rate_over_time(hours, chart_id="chart-hours", title="Delivery rate per hour, last 24 hours")
        + figures_table(hours, first_header="Hour", empty="No messages in the last 24 hours.")
        + "<h3>By network</h3>"
        + rate_by_network(networks, chart_id="chart-networks", title="Delivery rate by network")
        + figures_table(networks, first_header="Network", empty="No messages in this period.")
        + window_note(window)
    )


def batches_table(rows: list[history.BatchRow], zone: tzinfo) -> str:
    def counts(row: history.BatchRow) -> str:
        shown = ", ".join(f"{count} {status}" for status, count in sorted(row.view.counts.items()))
        return esc(shown + ("" if row.counted_all else f" (first {history.COUNTED_MESSAGES})"))

    body = [
        [
            batch_link(row.batch),
            esc(goes_out(row.batch, zone)),
            esc(row.batch.sender),
            esc(_short(row.batch.text)),
            str(row.batch.recipients),
            str(row.batch.parts),
            esc(cost_shown(row.batch.cost, row.refunded)),
            f'<span class="status">{esc(row.view.status)}</span>',
            counts(row),
        ]
        for row in rows
    ]
    headers = ["Reference", "Sent", "Sender", "Text", "Recipients", "Parts", "Cost", "Status", "Messages"]
    return table(headers, body, empty="No batches yet: send one from Compose.")


def goes_out(batch: Batch, zone: tzinfo) -> str:
    """The batches table's "Sent": when the batch goes out, its schedule time for a scheduled send (not when it was
    made, which read as sent already); a scheduled one that never went out (cancelled, or undone) says so."""
    if not batch.send_at:
        return local_time(batch.created_at, zone)
    when = local_time(batch.send_at, zone)
    if batch.status == MessageStatus.SCHEDULED:
        return f"scheduled for {when}"
    if batch.status in (MessageStatus.CANCELLED, MessageStatus.FAILED):
        return f"not sent (was scheduled for {when})"
    return when


def batch_link(batch: Batch) -> str:
    return f'<a href="{esc(_url(batch=str(batch.reference_id)))}">{batch.reference_id}</a>'


# ------------------------------------------------------------------ search


def search_form(query: Mapping[str, str]) -> str:
    def box(label: str, name: str, type_: str, hint: str) -> str:
        value = query.get(name, "")
        control = attrs(id=f"search-{name}", name=name, type=type_, value=value, aria_describedby=f"{name}-hint")
        return (
            f'<label for="search-{name}">{esc(label)}</label><input{control}>'
            f'<small id="{name}-hint">{esc(hint)}</small>'
        )

    bound = f"the last {history.MAX_WINDOW_BATCHES} batches (within the dates, if given)"
    return (
        f'<form method="get" action="{MESSAGES_PATH}" class="search" role="search">'
        + box("Number", "number", "text", f"Any form (0803..., +234803...). Searches {bound}.")
        + box("Reference", "reference", "text", "A reference_id, message_id, or your own ref_id.")
        + box("From", "from", "date", "First day, in the account's time zone.")
        + box("To", "to", "date", "Last day, included.")
        + '<button type="submit">Search</button></form>'
    )


def search_query(query: Mapping[str, str], zone: tzinfo) -> history.SearchQuery:
    first = _day(query.get("from"), "From")
    last = _day(query.get("to"), "To")
    return history.SearchQuery(
        number=(query.get("number") or "").strip() or None,
        reference=(query.get("reference") or "").strip() or None,
        since=datetime.combine(first, time(), zone) if first else None,
        until=datetime.combine(last, time.max, zone) if last else None,
    )


def _day(raw: str | None, name: str) -> date | None:
    if not raw or not raw.strip():
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError as error:
        raise InvalidRequest(f"{name}: {raw!r} is not a date (YYYY-MM-DD)") from error


def search_results(account: Account, query: history.SearchQuery, zone: tzinfo) -> str:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    found = history.search(store, store, account, query)
    note = (
        ""
        if found.complete
        else f'<p class="hint">Only the last {history.MAX_WINDOW_BATCHES} batches were searched: narrow the dates '
        "to search further back.</p>"
    )
    if query.number:
        return messages_table(found.messages, zone, with_batch=True, empty="No message to this number.") + note
    return batches_table(history.batch_rows(store, found.batches), zone) + note


# ------------------------------------------------------------------ one batch


def batch_detail(ctx: PageContext, raw_reference: str, zone: tzinfo) -> str:
    from sms_gateway.bootstrap import gateway

    store = gateway().store
    account_id = ctx.account.account_id
    # Another account's reference_id is "not found", exactly like one that never existed.
    reference_id = batches.parse_reference_id(raw_reference.strip())
    try:
        batch = batches.get_batch(store, account_id, reference_id)
    except NotFound:
        if not ctx.query.get(UNDER_WAY):
            raise
        return under_way(reference_id)
    [row] = history.batch_rows(store, [batch])
    view = row.view
    page_of_messages, cursor = store.list_messages(
        account_id, reference_id, limit=MESSAGES_PER_PAGE, cursor=ctx.query.get("cursor") or None
    )
    facts = [
        ("Reference", str(batch.reference_id)),
        ("Status", view.status),
        ("Sender", batch.sender),
        ("Created", local_time(batch.created_at, zone)),
        ("Scheduled for", local_time(batch.send_at, zone) if batch.send_at else "not scheduled"),
        ("Recipients", str(batch.recipients)),
        ("Parts", f"{batch.parts} ({batch.encoding})"),
        ("Cost", cost_shown(batch.cost, row.refunded, unit=" credits")),
        ("Your ref_id", batch.ref_id or "none"),
        ("Messages", ", ".join(f"{count} {status}" for status, count in sorted(view.counts.items())) or "none"),
    ]
    summary = '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"
    more = f'<p><a href="{esc(_url(batch=str(reference_id), cursor=cursor))}">More messages</a></p>' if cursor else ""
    sent = ""
    if ctx.query.get("sent"):
        refused = ctx.query.get("refused", "")
        left_out = f" {refused} recipients were left out: they opted out of this sender." if refused.isdigit() else ""
        if batch.status == MessageStatus.SCHEDULED and batch.send_at:
            # Nothing went out yet: the send only stored the batch for its time, and it can still be cancelled.
            done = f"Scheduled for {local_time(batch.send_at, zone)}; you can cancel it here until then."
        else:
            done = "Sent: the batch is being processed."
        sent = f'<div class="notice" role="status">{esc(done + left_out)}</div>'
    return (
        sent
        + f'<p><a href="{MESSAGES_PATH}">All batches</a></p>'
        + section(
            f"Batch {batch.reference_id}",
            summary + f'<p class="text">{esc(batch.text)}</p>' + cancel_form(ctx, batch),
            id_="batch",
        )
        + section("Messages", messages_table(page_of_messages, zone, with_batch=False, empty="No messages.") + more)
    )


def under_way(reference_id: int) -> str:
    """The page of a batch whose send is still under way (Compose sent twice before the first answer): not stored
    yet, or never, if that send is refused (its answer, with the reason, went to the click the browser dropped)."""
    again = f'<a href="{esc(_url(batch=str(reference_id), **{UNDER_WAY: "1"}))}">reload this page</a>'
    return (
        f'<div class="notice" role="status">Your send is still under way as batch {reference_id}: {again} in a '
        "moment to see it. If it does not appear, that send was refused and nothing was sent or charged: open "
        f'<a href="{esc(COMPOSE_PATH)}">Compose</a> to send it again.</div>'
    )


def cancel_form(ctx: PageContext, batch: Batch) -> str:
    """Offered only while the batch is scheduled; the cancel itself decides (a release may come first)."""
    if batch.status != MessageStatus.SCHEDULED:
        return ""
    return ctx.form_html(
        "cancel-batch",
        form_key_input(CANCEL_KEY_FIELD, new_form_key()),
        submit="Cancel this send",
        path=_url(batch=str(batch.reference_id)),
        css_class="cancel-batch",
        confirm=f"Cancel this send to {batch.recipients} recipients? Nothing of it is sent, and its credits come back.",
    )


def cancel_batch(ctx: PageContext) -> Notice:
    """The Cancel form of a scheduled batch's page: cancels the batch the page shows with the API's own cancel
    (logic.batches.cancel_batch: only the account's own batch, only while it is scheduled; its messages cancelled
    and refunded, its schedule deleted), and says what came back. Anything else is refused as that cancel refuses
    it, with nothing changed: another account's batch as one that does not exist (404), a released, failed or
    cancelled one with its status (409). Once per rendered form (its CANCEL_KEY_FIELD, run_form_once): the same
    form sent again (a reload of the answer, a click whose answer the browser dropped) shows what its first send
    did, the credits it refunded; a form without a key (a page drawn before forms had one) is the cancel alone."""
    reference_id = batches.parse_reference_id((ctx.query.get("batch") or "").strip())
    if not ctx.form.get(CANCEL_KEY_FIELD):
        return _cancelled(ctx, reference_id)

    def produce(claim: KeyClaim | None) -> StoredAnswer:
        return StoredAnswer(status_code=200, body=under_claim(claim, lambda: _cancelled(ctx, reference_id)).message)

    try:
        answer = run_form_once(
            ctx, CANCEL_KEY_FIELD, (), produce, lease=SEND_LEASE, query=("batch",), retry_failed_at_once=True
        )
    except KeyInProgress as error:
        raise Conflict(
            "This cancel is still being carried out (it was sent twice): open the batch again in a moment."
        ) from error
    except KeyReused as error:
        raise Conflict(
            "This form was sent for another batch, so nothing was cancelled: open the batch again."
        ) from error
    return Notice(answer.body)


def _cancelled(ctx: PageContext, reference_id: int) -> Notice:
    from sms_gateway.bootstrap import gateway

    account_id = ctx.account.account_id
    batch, refunded = cancel(account_id, reference_id)
    # Read consistently: an eventually consistent read right after the refund may show the balance before it.
    after = gateway().store.get_account(account_id, consistent=True)
    left = f" Your balance is now {after.credits} credits." if after is not None else ""
    return Notice(f"Batch {batch.reference_id} is cancelled: {refunded} credits were refunded.{left}")


def messages_table(messages: list[Message], zone: tzinfo, *, with_batch: bool, empty: str) -> str:
    def changed(message: Message) -> str:
        latest = message.status_at.get(str(message.status))
        return local_time(latest, zone) if latest else ""

    rows = [
        [
            *([f'<a href="{esc(_url(batch=str(m.reference_id)))}">{m.reference_id}</a>'] if with_batch else []),
            str(m.message_id),
            esc(m.msisdn.lstrip("+")),
            esc(m.telco or "unknown"),
            f'<span class="status" data-status="{esc(str(m.status))}">{esc(str(m.status))}</span>',
            esc(changed(m)),
            str(m.parts),
            esc(cost_shown(m.price, history.message_refund(m))),
            esc(m.error_code or ""),
        ]
        for m in messages
    ]
    headers = ["Message", "Number", "Network", "Status", "Since", "Parts", "Cost", "Error"]
    return table(["Batch", *headers] if with_batch else headers, rows, empty=empty)


# ------------------------------------------------------------------ helpers


def cost_shown(charged: int, refunded: int, *, unit: str = "") -> str:
    """A cost as it stands: what was charged less what came back (a cancelled send, a failed or expired message), with
    both said when anything came back, so a refunded send never reads as credits spent."""
    if not refunded:
        return f"{charged}{unit}"
    if unit:
        return f"{charged - refunded}{unit} ({charged} charged, {refunded} refunded)"
    return f"{charged - refunded} ({refunded} refunded)"


def _short(text: str) -> str:
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


def _url(**query: str | None) -> str:
    given = {name: value for name, value in query.items() if value}
    return f"{MESSAGES_PATH}?{urlencode(given)}" if given else MESSAGES_PATH

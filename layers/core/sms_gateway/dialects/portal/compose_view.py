"""The portal's Compose page as it works: the form, the send (once per rendered form) and the live preview's dry
run. Imported when the page or its preview is first served (compose.py registers them), not at cold start."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.event_handler import Response
from pydantic import BaseModel, ConfigDict, Field

from sms_gateway.dialects.common import (
    accept,
    json_request,
    json_response,
    status_for,
    under_claim,
    undo_refused_send,
)
from sms_gateway.dialects.ninebits import ROUTE_TIER
from sms_gateway.dialects.portal.compose import PREVIEW_PATH
from sms_gateway.dialects.portal.framework import (
    BAD_CSRF,
    BAD_ORIGIN,
    SIGNED_OUT,
    PageContext,
    asset_url,
    current_session,
    form_key_input,
    new_form_key,
    redirect,
    run_form_once,
    same_origin,
)
from sms_gateway.dialects.portal.markup import attrs, esc, select
from sms_gateway.dialects.portal.messages import MESSAGES_PATH
from sms_gateway.dialects.portal.messages_view import UNDER_WAY, stylesheet
from sms_gateway.domain.dates import InvalidClientDatetime, parse_client_datetime
from sms_gateway.domain.models import Account, SendCommand, StoredAnswer, utc_now
from sms_gateway.errors import (
    Conflict,
    GatewayError,
    InvalidRecipient,
    InvalidRequest,
    KeyInProgress,
    KeyReused,
)
from sms_gateway.logic import compose
from sms_gateway.logic.idempotency import SEND_LEASE
from sms_gateway.logic.send import Accepted, listed

CSRF_HEADER = "x-csrf-token"
SEND_KEY_FIELD = "send_key"
# A schedule time this far in the past is a mistake to point out, not a reason to send now.
PAST_TOLERANCE = timedelta(minutes=1)
# The fields that make a send what it is: a resubmitted form with the same key and these is the same send.
SEND_FIELDS = ("sender", "text", "numbers", "csv", "send_at")
# The name of the CSV file whose numbers the hidden `csv` field holds, shown while attached (not part of the send).
CSV_NAME_FIELD = "csv_name"


def compose_page(ctx: PageContext) -> str:
    account = ctx.account
    if not account.senders:
        return stylesheet() + (
            '<p class="empty">This account has no sender ID yet: request one on the '
            '<a href="/portal/settings">Settings</a> page; the operator approves it.</p>'
        )
    form = ctx.form
    # One key per rendered form: a double click or a resubmit of this form sends once (an error keeps the key, since
    # a refused send stored nothing under it).
    send_key = form.get(SEND_KEY_FIELD) or new_form_key()
    fields = (
        select("Sender", "sender", [(s, s) for s in account.senders], form.get("sender"))
        + textarea(
            "Message",
            "text",
            form.get("text", ""),
            rows=5,
            hint="GSM 7-bit: 160 characters in one part, 153 per part after. Other characters: 70, then 67.",
        )
        + textarea(
            "Recipients",
            "numbers",
            form.get("numbers", ""),
            rows=4,
            hint="One number per line, or separated by commas; national (0803...) or international (+234803...).",
        )
        # The file is read by compose.js into the hidden field (the form stays URL-encoded): without the script the
        # picker would be ignored, so it is only shown once the script runs.
        + '<div id="csv-block" hidden><label for="csv-file">Or a CSV file of numbers</label>'
        + f"<input{attrs(id='csv-file', type='file', accept='.csv,text/csv,text/plain', aria_describedby='csv-hint')}>"
        + '<small id="csv-hint">One column of numbers, or a column headed number, phone, msisdn or mobile. '
        + f"At most {compose.MAX_RECIPIENTS} numbers and {compose.MAX_CSV_BYTES // 1024} KB. Rows that are not "
        + "numbers are listed with their reason, and nothing is sent until they are fixed.</small>"
        + csv_attached(form)
        + "</div>"
        + f"<input{attrs(type='hidden', name='csv', id='csv', value=form.get('csv', ''))}>"
        + f"<input{attrs(type='hidden', name=CSV_NAME_FIELD, id=CSV_NAME_FIELD, value=form.get(CSV_NAME_FIELD, ''))}>"
        + '<label for="send_at">Send at (optional)</label>'
        + f"<input{attrs(id='send_at', name='send_at', type='datetime-local', value=form.get('send_at', ''))}"
        + ' aria-describedby="send_at-hint">'
        + f'<small id="send_at-hint">In {esc(account.timezone)}. Leave empty to send now.</small>'
        + form_key_input(SEND_KEY_FIELD, send_key)
        + preview_panel()
    )
    script = f'<script src="{esc(asset_url("compose.js"))}" defer></script>'
    return stylesheet() + ctx.form_html("send", fields, submit="Send", css_class="compose") + script


def csv_attached(form: Mapping[str, str]) -> str:
    """The CSV file the form carries, named, with a button to remove it: a page that comes back with the form (a
    refused send) keeps the file's numbers in the hidden field while the browser's picker shows no file, and without
    this the next send went to them unseen (compose.js shows it for a file just chosen too, and removes it)."""
    name = form.get(CSV_NAME_FIELD, "").strip() or "a CSV file chosen before"
    shown = bool(form.get("csv", "").strip())
    return (
        f"<p{attrs(id='csv-attached', hidden=not shown)}>"
        f'Attached: <strong id="csv-name">{esc(name)}</strong>. Its numbers are sent to as well. '
        '<button type="button" id="csv-remove">Remove the CSV file</button></p>'
    )


def textarea(label: str, name: str, value: str, *, rows: int, hint: str) -> str:
    """A labelled text box holding `value`. A line break always follows the start tag: HTML's parser drops one there,
    so a value that starts with a line break (a message whose first line is empty) comes back whole."""
    control = attrs(id=name, name=name, rows=str(rows), aria_describedby=f"{name}-hint")
    return (
        f'<label for="{esc(name)}">{esc(label)}</label><textarea{control}>\n{esc(value)}</textarea>'
        f'<small id="{esc(name)}-hint">{esc(hint)}</small>'
    )


def preview_panel() -> str:
    figures = "".join(
        f'<dt>{esc(label)}</dt><dd id="preview-{key}">-</dd>'
        for key, label in (
            ("parts", "Parts"),
            ("encoding", "Encoding"),
            ("per-part", "Characters per part"),
            ("recipients", "Recipients"),
            ("cost", "Cost (credits)"),
            ("balance", "Balance (credits)"),
        )
    )
    return (
        f'<section id="preview" aria-live="polite" data-url="{PREVIEW_PATH}"><h2>Preview</h2>'
        f'<p id="preview-status">The preview needs JavaScript; Send checks everything in any case.</p>'
        f'<dl class="facts">{figures}</dl><ul id="preview-problems"></ul></section>'
    )


# ------------------------------------------------------------------ send


def send(ctx: PageContext) -> Response[Any]:
    from sms_gateway.bootstrap import gateway

    account = ctx.account
    try:
        answer = run_form_once(
            ctx,
            SEND_KEY_FIELD,
            SEND_FIELDS,
            lambda claim: under_claim(claim, lambda: send_once(account, ctx.form)),
            lease=SEND_LEASE,
            undo=undo_refused_send(
                account,
                lambda: compose.recipients_still_named(gateway().store, account, recipients_of(ctx.form, account)),
                sent_answer,
            ),
        )
    except KeyInProgress as error:
        # The same form's first send is still under way (a second click before its answer came): the browser shows
        # this answer, not the first one, so it leads to the batch that send makes, as a resubmit after it ends does.
        if error.reference_id is None:
            raise
        return redirect(f"{MESSAGES_PATH}?batch={error.reference_id}&{UNDER_WAY}=1")
    except KeyReused as error:
        # The key is taken: this form was sent already, then changed.
        raise Conflict(
            "This form was sent already (with other values), so nothing more was sent: see Messages, "
            "or open Compose again for a new message."
        ) from error
    except Conflict as error:
        # Not the form's key: its send met another write at the same moment (a cancel or the sweeper changed the
        # batch a retry was finishing; two new batch ids that met are Unavailable, logic.send.IdTaken). Such a send
        # wrote nothing, or run_once undid what stood, and let the key go: the same form (the page shows it again,
        # with its key) may be sent again.
        raise Conflict(
            f"Nothing was sent or charged: this send met another change at the same moment ({error.message}). "
            "Send the form again."
        ) from error
    sent = json.loads(answer.body)
    refused = f"&refused={sent['refused']}" if sent["refused"] else ""
    return redirect(f"{MESSAGES_PATH}?batch={sent['reference_id']}&sent=1{refused}")


def send_once(account: Account, form: Mapping[str, str]) -> StoredAnswer:
    """The send itself, the path every dialect takes (logic/send.py): checked, priced, charged, stored, queued."""
    from sms_gateway.bootstrap import gateway

    text = as_typed(form.get("text", ""))
    if not text.strip():
        raise InvalidRequest("the message is empty: type the text to send")
    numbers = recipients_of(form, account)
    send_at = None
    if form.get("send_at", "").strip():
        from sms_gateway.domain.zones import account_zone

        try:
            send_at = parse_client_datetime(form["send_at"].strip(), account_zone(account.timezone))
        except InvalidClientDatetime as error:
            raise InvalidRequest(f"Send at: {error}") from error
        if send_at < utc_now() - PAST_TOLERANCE:
            raise InvalidRequest("Send at is in the past: leave it empty to send now, or pick a later time")
    recipients = compose.resolve_recipients(gateway().store, account, numbers, strict=True).recipients
    command = SendCommand(
        account_id=account.account_id,
        sender=form.get("sender", ""),
        text=text,
        recipients=tuple(recipients),
        # Reports go to the account's webhook when it has one; the portal shows them either way.
        delivery_report=account.default_delivery_report,
        send_at=send_at,
        route_tier=ROUTE_TIER,
        dialect="portal",
    )
    return sent_answer(accept(account, command))


def sent_answer(accepted: Accepted) -> StoredAnswer:
    """What `send` redirects to: the batch's page, with the count of recipients that opted out."""
    body = {"reference_id": str(accepted.batch.reference_id), "refused": len(accepted.refused)}
    return StoredAnswer(status_code=200, body=json.dumps(body))


def recipients_of(form: Mapping[str, str], account: Account) -> list[str]:
    """The pasted numbers and the CSV's, as typed (the send parses them); a CSV with a bad row sends nothing."""
    numbers = compose.pasted_numbers(form.get("numbers", ""))
    csv_text = as_typed(form.get("csv", ""))
    if csv_text.strip():
        from_csv, problems = compose.csv_numbers(csv_text.encode(), account.default_country)
        if problems:
            reasons = listed([str(problem) for problem in problems])
            raise InvalidRecipient(f"the CSV file has rows that are not numbers, so nothing was sent: {reasons}")
        numbers += from_csv
    if not numbers:
        raise InvalidRequest("there is no recipient: type or paste numbers, or choose a CSV file")
    return numbers


def as_typed(value: str) -> str:
    """A field's line breaks as the user typed them, one LF each, as compose.js counts them for the preview: HTML's
    form encoding sends every line break of a textarea (and of the CSV the script puts in its hidden field) as CR LF,
    which counted, was charged and reached the handset as one character more per line; a lone CR (a file saved
    on an old Mac) is a line break too. The send key's fingerprint stays on the form as posted."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


# ------------------------------------------------------------------ live preview


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sender: str = Field(default="", max_length=16)
    text: str = ""
    numbers: str = ""
    csv: str = ""


def preview(event: Any) -> Response[Any]:
    """The dry run of what the form would send, for the page's script: same-origin, signed in, and with the session's
    CSRF token in a header (a form on another site can send neither). Nothing is stored, charged or queued."""
    if not same_origin(event):
        return json_response(403, {"message": BAD_ORIGIN})
    # Consistent, as every POST: the balance quoted is the one left by a send just made.
    who = current_session(event, consistent=True)
    if who is None:
        return json_response(401, {"message": SIGNED_OUT})
    from sms_gateway.logic.portal_sessions import csrf_matches

    if not csrf_matches(who.token, (event.headers or {}).get(CSRF_HEADER)):
        return json_response(403, {"message": BAD_CSRF})
    try:
        return json_response(200, preview_of(who.account, json_request(event, PreviewRequest)))
    except GatewayError as error:
        return json_response(status_for(error), {"message": error.message})


def preview_of(account: Account, request: PreviewRequest) -> dict[str, Any]:
    from sms_gateway.bootstrap import gateway, price_book, send_dependencies

    numbers = compose.pasted_numbers(request.numbers)
    text, csv_text = as_typed(request.text), as_typed(request.csv)
    csv_problems: list[str] = []
    if csv_text.strip():
        from_csv, problems = compose.csv_numbers(csv_text.encode(), account.default_country)
        numbers += from_csv
        csv_problems = [str(problem) for problem in problems]
    dry = compose.dry_run(
        account,
        request.sender,
        text,
        numbers,
        groups_store=gateway().store,
        accounts=gateway().store,
        opt_outs=send_dependencies().opt_outs,
        prices=price_book().price_table(),
        route_tier=ROUTE_TIER,
    )
    segmentation = dry.priced.segmentation
    return {
        "message": "preview: nothing was sent or charged",
        "parts": segmentation.parts,
        "encoding": str(segmentation.encoding),
        "characters_per_part": segmentation.per_part,
        "ucs2_characters": list(segmentation.ucs2_characters),
        "recipients": len(dry.recipients),
        "total_cost": dry.priced.cost,
        "balance": dry.balance,
        "balance_sufficient": dry.sufficient,
        "invalid": [{"to": r.raw, "reason": r.reason} for r in dry.invalid],
        "opted_out": [{"to": r.raw, "reason": r.reason} for r in dry.opted_out],
        "csv_problems": csv_problems,
        "would_be_accepted": dry.would_be_accepted and bool(text.strip()) and not csv_problems,
    }

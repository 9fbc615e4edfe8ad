"""The portal's Settings page: webhooks (URLs, test event, token and signing secret), API credentials, sender IDs
and shortcodes, and the account's default country and time zone. Each form calls the same use case as the
operator's CLI (logic/accounts.py, logic/sender_requests.py), so the same checks apply."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import tzinfo
from typing import TYPE_CHECKING

from sms_gateway.dialects.portal.framework import (
    Notice,
    PageContext,
    form_key_input,
    local_time,
    new_form_key,
    page,
    run_form_once,
)
from sms_gateway.dialects.portal.markup import esc, field, section, select, table
from sms_gateway.domain.models import Account, KeyClaim, SenderRequest, SenderRequestStatus, StoredAnswer, utc_now
from sms_gateway.domain.senders import registry_form
from sms_gateway.errors import Conflict, KeyInProgress, KeyReused, NotFound

if TYPE_CHECKING:
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.logic.accounts import WebhookCredentials

SETTINGS_PATH = "/portal/settings"
CREDENTIAL_KINDS = (("token", "Bearer token (9bits, batches)"), ("apikey", "API key (shortcode API)"))
WEBHOOK_KINDS = (("dlr", "Delivery report (DLR) URL"), ("inbound", "Inbound SMS URL"))
WEBHOOK_URLS = ("dlr_url", "inbound_url")
# The hidden field beside each webhook URL's: the URL as the page showed it (webhooks_html).
SHOWN_SUFFIX = "_shown"
# The once-per-form key of the forms that make a secret (a credential, a rotated webhook token or signing secret): a
# double click or a reload of the answer must not make a second one, which no page would ever show.
FORM_KEY_FIELD = "form_key"


@page(SETTINGS_PATH, title="Settings", nav="Settings", order=30)
def settings_page(ctx: PageContext) -> str:
    account = ctx.account
    return "\n".join(
        [
            section("Webhooks", webhooks_html(ctx, account), id_="webhooks"),
            section("API credentials", credentials_html(ctx), id_="credentials"),
            section("Sender IDs and shortcodes", senders_html(ctx, account), id_="senders"),
            section("Account defaults", defaults_form(ctx, account), id_="defaults"),
        ]
    )


def _store() -> DynamoStore:
    from sms_gateway.bootstrap import gateway

    return gateway().store


# ------------------------------------------------------------------ webhooks


def webhooks_html(ctx: PageContext, account: Account) -> str:
    urls = _url_field(
        ctx,
        account,
        "Delivery report (DLR) URL",
        "dlr_url",
        hint="Where delivery reports are POSTed. Leave empty for none.",
    ) + _url_field(
        ctx,
        account,
        "Inbound SMS URL",
        "inbound_url",
        hint="Where replies and other inbound SMS are POSTed. Leave empty for none.",
    )
    test = select("Send a test event to", "kind", WEBHOOK_KINDS, ctx.form.get("kind", "dlr"))
    token_state = "set" if account.webhook_token else "not set"
    secret_state = "set" if account.webhook_secret else "not set"
    return "".join(
        [
            ctx.form_html("webhooks", urls, submit="Save webhook URLs"),
            ctx.form_html("test-event", test, submit="Send test event", css_class="test-event"),
            "<p>Every webhook call carries <code>Authorization: Bearer &lt;webhook token&gt;</code> and a "
            "<code>webhook-signature</code> made with the signing secret (docs/webhooks.md). Both are shown once, "
            "when they are made: rotate one to see a new value.</p>",
            f"<p>Webhook token: <strong>{token_state}</strong>. Signing secret: <strong>{secret_state}</strong>.</p>",
            ctx.form_html(
                "rotate-token",
                form_key_input(FORM_KEY_FIELD, new_form_key()),
                submit="Rotate webhook token",
                css_class="inline",
                confirm="Your webhook must accept the new token at once. Rotate it?",
            ),
            ctx.form_html(
                "rotate-secret",
                form_key_input(FORM_KEY_FIELD, new_form_key()),
                submit="Rotate signing secret",
                css_class="inline",
                confirm="Your webhook must check signatures with the new secret at once. Rotate it?",
            ),
        ]
    )


def _url_field(ctx: PageContext, account: Account, label: str, name: str, *, hint: str) -> str:
    """A webhook URL's field, with the URL the account has as the page shows it (hidden, `<name>_shown`): the save
    changes only the URLs the user changed from those, and only while the account still has them. A page shown again
    after a refused save keeps what the user changed, and shows the others (and takes them as shown) as they are now."""
    stored = getattr(account, name) or ""
    value = ctx.form[name] if _changed_in_form(ctx, name) else stored
    return field(label, name, value, type_="url", hint=hint) + form_key_input(f"{name}{SHOWN_SUFFIX}", stored)


def _changed_in_form(ctx: PageContext, name: str) -> bool:
    """Whether the posted form changes the URL `name` (a post without the URL shown, a script's, changes each URL
    it carries)."""
    typed = ctx.form.get(name)
    shown = ctx.form.get(f"{name}{SHOWN_SUFFIX}")
    return typed is not None and (shown is None or typed.strip() != shown.strip())


def _set_webhooks(
    ctx: PageContext,
    *,
    dlr_url: str | None = None,
    inbound_url: str | None = None,
    rotate_token: bool = False,
    rotate_secret: bool = False,
    expecting: dict[str, str | None] | None = None,
) -> WebhookCredentials:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    wiring = gateway()
    _, rotated = accounts.set_webhooks(
        wiring.store,
        wiring.webhook_credentials,
        ctx.account.account_id,
        dlr_url=dlr_url,
        inbound_url=inbound_url,
        rotate_token=rotate_token,
        rotate_secret=rotate_secret,
        allow_http=wiring.settings.allow_http_webhooks,
        by="portal",
        now=utc_now(),
        # Only while the session's password is the account's: a form whose session check passed just before a
        # reset changes nothing after it (as create-credential).
        under_password_epoch=_session_epoch(ctx),
        expecting=expecting,
    )
    return rotated


@settings_page.action("webhooks")
def save_webhooks(ctx: PageContext) -> Notice:
    """Saves the URLs the user changed, each only while the account still has it as the page showed it: a page
    open for a while (another tab) no longer writes back a URL changed meanwhile (the API, that tab)."""
    changed = [name for name in WEBHOOK_URLS if _changed_in_form(ctx, name)]
    if not changed:
        return Notice("Nothing to save: the webhook URLs are as the page showed them.")
    shown = {name: ctx.form[f"{name}{SHOWN_SUFFIX}"] for name in changed if f"{name}{SHOWN_SUFFIX}" in ctx.form}
    _set_webhooks(
        ctx,
        dlr_url=_posted_url(ctx, "dlr_url", changed),
        inbound_url=_posted_url(ctx, "inbound_url", changed),
        expecting={name: value or None for name, value in shown.items()},
    )
    return Notice("Webhook URLs saved.")


def _posted_url(ctx: PageContext, name: str, changed: list[str]) -> str | None:
    """An empty field removes its webhook; a field left as shown, or that the post leaves out, keeps it (None)."""
    return ctx.form[name].strip() if name in changed else None


@settings_page.action("rotate-token")
def rotate_token(ctx: PageContext) -> Notice:
    _, token = _once(ctx, (), lambda: ({}, _set_webhooks(ctx, rotate_token=True).token or ""))
    if token is None:
        return _made_already("rotated the webhook token", "Rotate it again")
    return Notice("A new webhook token is in use from now on.", reveal=(("Webhook token", token),))


@settings_page.action("rotate-secret")
def rotate_secret(ctx: PageContext) -> Notice:
    _, secret = _once(ctx, (), lambda: ({}, _set_webhooks(ctx, rotate_secret=True).secret or ""))
    if secret is None:
        return _made_already("rotated the signing secret", "Rotate it again")
    return Notice("Webhooks are signed with a new secret from now on.", reveal=(("Signing secret", secret),))


def _once(
    ctx: PageContext, fields: tuple[str, ...], make: Callable[[], tuple[dict[str, str], str]]
) -> tuple[dict[str, str], str | None]:
    """Runs the form's `make` once per form key (run_form_once). `make` returns what may be kept (a credential's
    prefix: the answer's key is stored) and the secret it made. Answers (what was kept, the secret) when this
    request made it, and (what was kept, None) when the form was sent before (a double click, a reload of the
    answer): that secret was shown once, by the first answer, and is kept nowhere."""
    made: list[str] = []

    def produce(_claim: KeyClaim | None) -> StoredAnswer:
        kept, secret = make()
        made.append(secret)
        return StoredAnswer(status_code=200, body=json.dumps({"kept": kept}))

    try:
        answer = run_form_once(ctx, FORM_KEY_FIELD, fields, produce)
    except KeyInProgress as error:
        raise Conflict(
            "This form is still being carried out (it was sent twice), so nothing more was changed: open Settings "
            "again in a moment."
        ) from error
    except KeyReused as error:
        raise Conflict("This form was sent already, so nothing more was changed: open Settings again.") from error
    return json.loads(answer.body)["kept"], made[0] if made else None


def _made_already(done: str, again: str) -> Notice:
    """The answer to a secret-making form sent again: nothing more was made, and the secret is not shown again."""
    return Notice(
        f"This form {done} already, so nothing more was changed. Its new value was shown once, in the answer to "
        f"the first send of the form; if you did not copy it, {again} below."
    )


@settings_page.action("test-event")
def send_test_event(ctx: PageContext) -> Notice:
    from sms_gateway.adapters import http
    from sms_gateway.bootstrap import gateway
    from sms_gateway.consumers import post_webhook
    from sms_gateway.domain.models import iso
    from sms_gateway.errors import InvalidRequest
    from sms_gateway.logic import notify

    kind = ctx.form.get("kind", "")
    if kind not in dict(WEBHOOK_KINDS):
        raise InvalidRequest(f"test event kind must be one of {', '.join(dict(WEBHOOK_KINDS))}")
    try:
        wiring = gateway()
        sent = notify.send_test_event(
            ctx.account, kind, post_webhook, wiring.webhook_credentials, sent_at=iso(utc_now())
        )
        result = http.run(sent)
    except notify.WebhookFailed as failure:
        return Notice(f"The test event to {failure.url or 'your webhook'} failed: {failure}.", failed=True)
    return Notice(f"Test event sent to {result.url}: your webhook answered {result.status_code}.")


# ------------------------------------------------------------------ API credentials


def credentials_html(ctx: PageContext) -> str:
    from sms_gateway.domain.zones import account_zone
    from sms_gateway.logic import accounts

    zone = account_zone(ctx.account.timezone)
    rows = []
    for credential in accounts.list_credentials(_store(), ctx.account.account_id):
        if credential.revoked:
            state, revoke = f"revoked {esc(local_time(credential.revoked_at, zone))}", ""
        else:
            state = "active"
            revoke = ctx.form_html(
                "revoke-credential",
                f'<input type="hidden" name="prefix" value="{esc(credential.prefix)}">'
                f'<input type="hidden" name="kind" value="{esc(credential.kind)}">',
                submit="Revoke",
                css_class="inline",
                confirm=f"Revoke the {credential.kind} starting {credential.prefix}? Clients using it stop working.",
            )
        rows.append(
            (
                esc(credential.kind),
                f'<code data-prefix="{esc(credential.prefix)}">{esc(credential.prefix)}…</code>',
                esc(local_time(credential.created_at, zone)),
                state,
                revoke,
            )
        )
    listing = table(["Kind", "Starts with", "Created", "State", ""], rows, empty="No API credentials.")
    create = ctx.form_html(
        "create-credential",
        select("New credential", "kind", CREDENTIAL_KINDS, ctx.form.get("kind", "token"))
        + form_key_input(FORM_KEY_FIELD, new_form_key()),
        submit="Create credential",
    )
    return listing + create


def _session_epoch(ctx: PageContext) -> str:
    """The password the session was signed in with (Account.password_epoch; a session from before sessions carried
    one: the account's as read with it)."""
    epoch = ctx.signed_in.session.password_epoch
    return ctx.account.password_epoch if epoch is None else epoch


@settings_page.action("create-credential")
def create_credential(ctx: PageContext) -> Notice:
    from sms_gateway.logic import accounts

    def issue() -> tuple[dict[str, str], str]:
        # Made under the session's password: a reset of it revokes the credential (a leaked password's holder could
        # otherwise keep sending with it for ever).
        issued = accounts.issue_credential(
            _store(),
            ctx.account.account_id,
            ctx.form.get("kind", ""),
            now=utc_now(),
            in_portal_under=_session_epoch(ctx),
        )
        return {"kind": str(issued.kind), "prefix": issued.prefix}, issued.secret

    made, secret = _once(ctx, ("kind",), issue)
    kind, prefix = made["kind"], made["prefix"]
    if secret is None:
        return _made_already(f"created a {kind} (starts with {prefix})", "revoke that one and create another")
    return Notice(f"New {kind} created (starts with {prefix}).", reveal=((f"New {kind}", secret),))


@settings_page.action("revoke-credential")
def revoke_credential(ctx: PageContext) -> Notice:
    from sms_gateway.logic import accounts

    kind = ctx.form.get("kind") or None
    prefix = ctx.form.get("prefix", "")
    try:
        revoked = accounts.revoke_credential(_store(), ctx.account.account_id, prefix, kind=kind, now=utc_now())
    except (NotFound, Conflict) as error:
        # The use case speaks to the operator (the account id, the CLI's list-credentials); the page lists them.
        what = f"{kind} starting {prefix}" if kind else f"credential starting {prefix}"
        found = "has no" if isinstance(error, NotFound) else "has more than one"
        raise type(error)(
            f"This account {found} {what}, so nothing was revoked: revoke one of the API credentials listed below."
        ) from error
    return Notice(f"The {revoked.kind} starting {revoked.prefix} is revoked: it no longer authenticates.")


# ------------------------------------------------------------------ sender IDs and shortcodes


def _sender_cell(sender: str) -> str:
    return f'<code data-sender="{esc(sender)}">{esc(sender)}</code>'


def senders_html(ctx: PageContext, account: Account) -> str:
    from sms_gateway.domain.zones import account_zone
    from sms_gateway.logic import sender_requests

    requests = sender_requests.list_requests(_store(), account.account_id)
    requested = {registry_form(request.sender) for request in requests}
    rows = [
        (_sender_cell(sender), '<span class="status-approved">registered</span>', "", "")
        for sender in account.senders
        if registry_form(sender) not in requested
    ]
    zone = account_zone(account.timezone)
    rows += [_request_row(request, sender_requests.shown_status(request, account), zone) for request in requests]
    listing = table(["Sender", "Status", "Requested", "Reason"], rows, empty="No sender IDs or shortcodes yet.")
    ask = ctx.form_html(
        "request-sender",
        field(
            "Request a sender ID or shortcode",
            "sender",
            ctx.form.get("sender", ""),
            required=True,
            hint="Letters and digits up to 11 characters (a sender ID), or a number (a shortcode or long code). "
            "An operator approves or rejects it.",
        ),
        submit="Request",
    )
    return listing + ask


def _request_row(request: SenderRequest, status: str, zone: tzinfo) -> tuple[str, str, str, str]:
    from sms_gateway.logic.sender_requests import RELEASED

    # A rejected request's reason, only while it reads rejected (not once the operator registered the sender).
    if status == RELEASED:
        reason = "an operator released it: you may request it again"
    else:
        reason = (request.reason or "") if status == str(SenderRequestStatus.REJECTED) else ""
    return (
        _sender_cell(request.sender),
        f'<span class="status-{esc(status)}">{esc(status)}</span>',
        esc(local_time(request.requested_at, zone)),
        esc(reason),
    )


@settings_page.action("request-sender")
def request_sender(ctx: PageContext) -> Notice:
    from sms_gateway.logic import sender_requests

    request = sender_requests.request_sender(_store(), ctx.account, ctx.form.get("sender", ""), now=utc_now())
    return Notice(f"Sender {request.sender} requested: it is pending until an operator approves it.")


# ------------------------------------------------------------------ account defaults


def defaults_form(ctx: PageContext, account: Account) -> str:
    fields = field(
        "Default country",
        "country",
        ctx.form.get("country", account.default_country),
        required=True,
        hint="ISO 3166 code (NG, KE, GH, ...): how numbers written without +country code are read.",
    ) + field(
        "Time zone",
        "timezone",
        ctx.form.get("timezone", account.timezone),
        required=True,
        hint="IANA name (Africa/Lagos, Africa/Nairobi, ...): how times without an offset are read and shown.",
    )
    return ctx.form_html("defaults", fields, submit="Save defaults")


@settings_page.action("defaults")
def save_defaults(ctx: PageContext) -> Notice:
    from sms_gateway.logic import accounts

    account = accounts.set_account(
        _store(),
        ctx.account.account_id,
        country=ctx.form.get("country", "").strip(),
        timezone=ctx.form.get("timezone", "").strip(),
    )
    return Notice(f"Saved: default country {account.default_country}, time zone {account.timezone}.")

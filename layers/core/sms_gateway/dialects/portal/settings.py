"""The portal's Settings page: webhooks (URLs, test event, token and signing secret), API credentials, sender IDs
and shortcodes, and the account's default country and time zone."""

from __future__ import annotations

from sms_gateway.dialects.portal.framework import Notice, PageContext, page
from sms_gateway.dialects.portal.markup import field, section
from sms_gateway.domain.models import Account

SETTINGS_PATH = "/portal/settings"


@page(SETTINGS_PATH, title="Settings", nav="Settings", order=30)
def settings_page(ctx: PageContext) -> str:
    account = ctx.account
    return "\n".join(
        [
            section("Webhooks", webhook_urls_form(ctx, account), id_="webhooks"),
            section("Account defaults", defaults_form(ctx, account), id_="defaults"),
        ]
    )


# ------------------------------------------------------------------ webhooks


def webhook_urls_form(ctx: PageContext, account: Account) -> str:
    fields = field(
        "Delivery report (DLR) URL",
        "dlr_url",
        ctx.form.get("dlr_url", account.dlr_url or ""),
        type_="url",
        hint="Where delivery reports are POSTed. Leave empty for none.",
    ) + field(
        "Inbound SMS URL",
        "inbound_url",
        ctx.form.get("inbound_url", account.inbound_url or ""),
        type_="url",
        hint="Where replies and other inbound SMS are POSTed. Leave empty for none.",
    )
    return ctx.form_html("webhooks", fields, submit="Save webhook URLs")


@settings_page.action("webhooks")
def save_webhooks(ctx: PageContext) -> Notice:
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    wiring = gateway()
    accounts.set_webhooks(
        wiring.store,
        ctx.account.account_id,
        dlr_url=ctx.form.get("dlr_url", "").strip(),
        inbound_url=ctx.form.get("inbound_url", "").strip(),
        allow_http=wiring.settings.allow_http_webhooks,
    )
    return Notice("Webhook URLs saved.")


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
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import accounts

    account = accounts.set_account(
        gateway().store,
        ctx.account.account_id,
        country=ctx.form.get("country", "").strip(),
        timezone=ctx.form.get("timezone", "").strip(),
    )
    return Notice(f"Saved: default country {account.default_country}, time zone {account.timezone}.")

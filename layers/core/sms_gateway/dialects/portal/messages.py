"""The portal's Messages page: recent batches and their messages, search, delivery-rate charts, credits, and the
cancel of a scheduled batch.

Only the registration is here; the page is drawn by messages_view.py, imported the first time it is served."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from sms_gateway.dialects.portal.framework import Notice, PageContext, page

MESSAGES_PATH = "/portal/messages"


@page(MESSAGES_PATH, title="Messages", nav="Messages", order=10)
def messages_page(ctx: PageContext) -> str | Response[Any]:
    from sms_gateway.dialects.portal import messages_view

    return messages_view.messages_page(ctx)


@messages_page.action("cancel-batch")
def cancel_batch(ctx: PageContext) -> Notice:
    from sms_gateway.dialects.portal import messages_view

    return messages_view.cancel_batch(ctx)

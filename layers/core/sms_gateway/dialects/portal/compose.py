"""The portal's Compose page: a message to pasted numbers or an uploaded CSV, with a live segment and cost preview
(the 9bits dry run's logic, behind a small JSON endpoint) and a send that happens once per rendered form.

Only the registrations are here; compose_view.py does the work, imported the first time it is needed."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response

from sms_gateway.dialects.portal.framework import PageContext, page, router

COMPOSE_PATH = "/portal/compose"
PREVIEW_PATH = "/portal/compose/preview"


@page(COMPOSE_PATH, title="Compose", nav="Compose", order=20)
def compose_page(ctx: PageContext) -> str:
    from sms_gateway.dialects.portal import compose_view

    return compose_view.compose_page(ctx)


@compose_page.action("send")
def send(ctx: PageContext) -> Response[Any]:
    from sms_gateway.dialects.portal import compose_view

    return compose_view.send(ctx)


@router.post(PREVIEW_PATH, include_in_schema=False)
def preview() -> Response[Any]:
    from sms_gateway.dialects.portal import compose_view

    return compose_view.preview(router.current_event)

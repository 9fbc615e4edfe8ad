"""The account portal (/portal): server-rendered pages for an account's own settings, served by the `api` function.

Each page module registers its routes on `framework.router` when it is imported: add a new one to PAGE_MODULES
(docs/portal.md)."""

from sms_gateway.dialects.portal import compose, messages, settings, signin
from sms_gateway.dialects.portal.framework import render_error, router

# One line per page module; importing a module registers its pages.
PAGE_MODULES = (
    signin,
    settings,
    messages,
    compose,
)

__all__ = ["PAGE_MODULES", "render_error", "router"]

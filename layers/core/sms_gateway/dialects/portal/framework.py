"""The portal's page framework: signed-in pages, forms with CSRF tokens, cookies, the layout and static assets.

A page module registers a page with `@page(path, title=..., nav=...)` and its form handlers with `@<page>.action(name)`;
docs/portal.md shows how. The framework resolves the session before any page code runs, checks every POST's origin
and CSRF token, and renders the page inside the shared layout."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from datetime import timedelta, tzinfo
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from sms_gateway.dialects.common import error_headers, query_fields, request_text, status_for
from sms_gateway.dialects.portal.markup import attrs, esc, layout
from sms_gateway.domain.models import Account, KeyClaim, StoredAnswer, from_iso, utc_now
from sms_gateway.errors import GatewayError, InvalidRequest, Unauthorized, UnsupportedMediaType

if TYPE_CHECKING:
    from sms_gateway.logic.portal_sessions import SignedIn

router = APIGatewayHttpRouter()

PORTAL_PATH = "/portal"
LOGIN_PATH = "/portal/login"
LOGOUT_PATH = "/portal/logout"
ASSETS_PATH = "/portal/assets"
SESSION_COOKIE = "portal_session"
CSRF_FIELD = "csrf_token"
ACTION_FIELD = "action"
# Sign in again, for a POST that arrives without a live session (the page that sent it is stale).
SIGNED_OUT = "You are not signed in, or your session has expired: sign in again."
BAD_ORIGIN = "This form was not sent from the portal's own pages, so nothing was changed."
BAD_CSRF = "This form has expired or was not sent from the portal's own pages, so nothing was changed. Try again."
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 100

ASSETS_DIR = Path(__file__).parent / "assets"
ASSET_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Asset URLs carry their content's hash (`?v=`), so a browser may keep them for a year; a URL without the current
# hash is answered too (an old page after a deploy), for a short while only.
VERSIONED_ASSET_CACHE = "public, max-age=31536000, immutable"
UNVERSIONED_ASSET_CACHE = "public, max-age=300"

# No inline script or style anywhere, so the policy can forbid both: an injected tag would not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Secrets are shown once: no cache may keep a page, and the back button must not show it again.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin requests keep their Referer (one of the two origin checks); other sites never see portal URLs.
    "Referrer-Policy": "same-origin",
}
HTML = "text/html; charset=utf-8"


# ------------------------------------------------------------------ what pages see


# Plain classes rather than dataclasses: a dataclass is built by exec at import, which the api's cold start pays.
class Notice:
    """What an action tells the user; `reveal` holds (label, secret) pairs shown this once only. `failed` shows the
    message as an error while the page answers 200: the action ran, but what it tried did not work (a test event
    the client's webhook refused); bad input is a GatewayError instead."""

    __slots__ = ("failed", "message", "reveal")

    def __init__(self, message: str, reveal: tuple[tuple[str, str], ...] = (), failed: bool = False) -> None:
        self.message = message
        self.reveal = reveal
        self.failed = failed


class PageContext:
    """A signed-in request to a page: the account, the request's query and form (the POSTed fields, CSRF token
    already checked; empty on a GET), and what to tell the user."""

    __slots__ = ("error", "event", "form", "notice", "page", "query", "signed_in")

    def __init__(
        self,
        page: Page,
        signed_in: SignedIn,
        event: Any,
        *,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        notice: Notice | None = None,
        error: str | None = None,
    ) -> None:
        self.page = page
        self.signed_in = signed_in
        self.event = event
        self.query: Mapping[str, str] = query or {}
        self.form: Mapping[str, str] = form or {}
        self.notice = notice
        self.error = error

    def but(self, **changes: Any) -> PageContext:
        """A copy with some attributes changed (the context itself is never modified)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        return PageContext(**{**values, **changes})

    @property
    def account(self) -> Account:
        return self.signed_in.account

    @property
    def csrf_token(self) -> str:
        return self.signed_in.csrf_token

    def csrf_field(self) -> str:
        return csrf_input(self.csrf_token)

    def form_html(
        self,
        action: str,
        fields: str,
        *,
        submit: str,
        path: str | None = None,
        css_class: str | None = None,
        confirm: str | None = None,
    ) -> str:
        """A POST form to `path` (this page by default) that runs its `action`, with the CSRF field in it.
        `fields` is HTML already (see markup.field); `confirm` asks the user first (portal.js)."""
        return post_form(
            path or self.page.path,
            self.csrf_token,
            fields,
            action=action,
            submit=submit,
            css_class=css_class,
            confirm=confirm,
        )


View = Callable[[PageContext], "str | Response[Any]"]
Action = Callable[[PageContext], "Notice | Response[Any] | None"]


class Page:
    """A signed-in page: GET renders `view`; a POST runs the action its form names, then renders the view again."""

    def __init__(self, path: str, title: str, view: View, *, nav: str | None, order: int) -> None:
        self.path = path
        self.title = title
        self.view = view
        self.nav = nav
        self.order = order
        self.actions: dict[str, Action] = {}

    def action(self, name: str) -> Callable[[Action], Action]:
        """Registers the handler of the forms whose `action` field is `name` (ctx.form_html(name, ...) writes it).
        It returns a Notice (shown above the page), a Response (sent as it is, e.g. a redirect) or None; a
        GatewayError it raises is shown as the page's error, with its HTTP status."""

        def register(handler: Action) -> Action:
            if name in self.actions:
                raise ValueError(f"page {self.path} already has an action {name!r}")
            self.actions[name] = handler
            return handler

        return register


PAGES: dict[str, Page] = {}


def page(path: str, *, title: str, nav: str | None = None, order: int = 100) -> Callable[[View], Page]:
    """Registers a signed-in page at `path` (under /portal). `nav` is its label in the top navigation (None: not
    listed); pages are listed by `order`, and the first one listed is where signing in leads."""
    if not path.startswith(f"{PORTAL_PATH}/"):
        raise ValueError(f"portal pages live under {PORTAL_PATH}/, not {path}")

    def register(view: View) -> Page:
        if path in PAGES:
            raise ValueError(f"a portal page is registered at {path} already")
        registered = Page(path, title, view, nav=nav, order=order)
        PAGES[path] = registered

        def handle() -> Response[Any]:
            return serve(registered)

        handle.__name__ = f"portal_page_{path.removeprefix(PORTAL_PATH + '/').replace('/', '_')}"
        router.route(path, method=["GET", "POST"], include_in_schema=False)(handle)
        return registered

    return register


def home_path() -> str:
    """Where signing in leads: the first page in the navigation."""
    listed = sorted((p for p in PAGES.values() if p.nav), key=lambda p: p.order)
    return listed[0].path if listed else PORTAL_PATH


# ------------------------------------------------------------------ serving a page


def serve(registered: Page) -> Response[Any]:
    event = router.current_event
    method = event.request_context.http.method.upper()
    if method == "POST" and not same_origin(event):
        return refusal(403, BAD_ORIGIN)
    who = current_session(event, consistent=method == "POST")
    if who is None:
        if method == "GET":
            return redirect(LOGIN_PATH)
        return refusal(401, SIGNED_OUT)
    # The query as sent (common.query_fields): one that is not UTF-8 is a 400 page, not a search for other text.
    ctx = PageContext(page=registered, signed_in=who, event=event, query=query_fields(event))
    if method != "POST":
        return render(ctx)
    form = read_form(event)
    if not csrf_ok(who, form):
        return refusal(403, BAD_CSRF)
    ctx = ctx.but(form=form)
    handler = registered.actions.get(form.get(ACTION_FIELD, ""))
    if handler is None:
        return render(ctx.but(error=f"Unknown form action {form.get(ACTION_FIELD, '')!r}."), status=400)
    try:
        outcome = handler(ctx)
    except Unauthorized:
        # The session's password was reset after it was read (the action's write is conditional on it): it is
        # signed out, and nothing was changed.
        return refusal(401, SIGNED_OUT)
    except GatewayError as error:
        return render(ctx.but(error=error.message), status=status_for(error))
    if isinstance(outcome, Response):
        return outcome
    # The page shows the account as the action left it, and empty forms (the values are saved).
    return render(ctx.but(signed_in=refreshed(who), form={}, notice=outcome))


def render(ctx: PageContext, *, status: int = 200) -> Response[Any]:
    body = ctx.page.view(ctx)
    if isinstance(body, Response):
        return body
    return html_response(
        status,
        page_html(title=ctx.page.title, body=body, ctx=ctx),
    )


def page_html(*, title: str, body: str, ctx: PageContext | None = None, error: str | None = None) -> str:
    """A page in the layout; with `ctx` (signed in), the navigation and the context's notice or error."""
    messages = messages_html(ctx.notice if ctx else None, (ctx.error if ctx else None) or error)
    nav = nav_html(ctx) if ctx else ""
    return layout(
        title=title, body=body, nav=nav, messages=messages, css=asset_url("portal.css"), js=asset_url("portal.js")
    )


def nav_html(ctx: PageContext) -> str:
    links = "".join(
        f"<a{attrs(href=p.path, aria_current='page' if p is ctx.page else None)}>{esc(p.nav or '')}</a>"
        for p in sorted(PAGES.values(), key=lambda p: p.order)
        if p.nav
    )
    sign_out = post_form(LOGOUT_PATH, ctx.csrf_token, "", action="sign-out", submit="Sign out", css_class="sign-out")
    return f'<nav aria-label="Portal">{links}</nav><span class="who">{esc(ctx.account.name)}</span>{sign_out}'


def messages_html(notice: Notice | None, error: str | None) -> str:
    parts = []
    if error:
        parts.append(f'<div class="error" role="alert">{esc(error)}</div>')
    if notice and notice.failed:
        parts.append(f'<div class="error" role="alert">{esc(notice.message)}</div>')
    elif notice:
        parts.append(f'<div class="notice" role="status">{esc(notice.message)}</div>')
        if notice.reveal:
            items = "".join(
                f'<dt>{esc(label)}</dt><dd><code class="secret">{esc(secret)}</code>'
                f'<button type="button" class="copy">Copy</button></dd>'
                for label, secret in notice.reveal
            )
            parts.append(
                '<div class="reveal"><p><strong>Shown once.</strong> Copy it now: the portal will not show it '
                f"again.</p><dl>{items}</dl></div>"
            )
    return "\n".join(parts)


def csrf_input(token: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(token)}">'


def post_form(
    path: str,
    csrf_token: str,
    fields: str,
    *,
    action: str,
    submit: str,
    css_class: str | None = None,
    confirm: str | None = None,
) -> str:
    return (
        f"<form{attrs(method='post', action=path, class_=css_class, data_confirm=confirm)}>"
        f"{csrf_input(csrf_token)}"
        f'<input type="hidden" name="{ACTION_FIELD}" value="{esc(action)}">'
        f'{fields}<button type="submit">{esc(submit)}</button></form>'
    )


def local_time(stamp: str | None, zone: tzinfo) -> str:
    """A stored time (UTC) as every portal page writes it: in the account's zone, to the second."""
    if not stamp:
        return ""
    return from_iso(stamp).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------ forms that act once


def new_form_key() -> str:
    """A key for one rendered form whose POST must act once (a send, a new credential, a rotated secret): a double
    click, a resubmit or a reload of the answer posts the same key, and run_form_once answers it without acting."""
    return secrets.token_urlsafe(18)


def form_key_input(name: str, value: str) -> str:
    return f"<input{attrs(type='hidden', name=name, value=value)}>"


def run_form_once(
    ctx: PageContext,
    key_field: str,
    fields: tuple[str, ...],
    produce: Callable[[KeyClaim | None], StoredAnswer],
    *,
    lease: timedelta | None = None,
    undo: Callable[[KeyClaim], StoredAnswer | None] | None = None,
    query: tuple[str, ...] = (),
    retry_failed_at_once: bool = False,
) -> StoredAnswer:
    """`produce` run once per form key (the idempotency store, scope the account, 24 hours), the key named for the
    form's action: a repeat with the same `fields` gets the first answer, kept (logic.idempotency.run_once: only a
    2xx answer is kept, so a refused form can be corrected and sent again); one with other values is refused
    (KeyReused), one while the first is still running too (KeyInProgress). A kept answer is stored: no secret in it.
    `query`: the query parameters the action reads too (the batch a cancel names), told apart as the fields are.
    `retry_failed_at_once`: run_once's, for a cancel (the form sent again finishes it)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.idempotency import MAX_KEY_LENGTH, fingerprint, run_once

    key = ctx.form.get(key_field, "").strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest("this form has no key to send it once: reload the page and try again")
    return run_once(
        gateway().store,
        scope=ctx.account.account_id,
        key=f"portal-{ctx.form.get(ACTION_FIELD, '')}:{key}",
        request_fingerprint=fingerprint(
            ctx.page.path,
            *(ctx.form.get(name, "") for name in fields),
            *(f"{name}={ctx.query.get(name, '')}" for name in query),
        ),
        now=utc_now(),
        produce=produce,
        lease=lease,
        undo=undo,
        retry_failed_at_once=retry_failed_at_once,
    )


# ------------------------------------------------------------------ requests and responses


def session_cookie(event: Any) -> str | None:
    return cookie(event, SESSION_COOKIE)


def cookie(event: Any, name: str) -> str | None:
    for item in event.cookies or []:
        key, _, value = item.partition("=")
        if key.strip() == name:
            return value.strip() or None
    return None


def current_session(event: Any, *, consistent: bool = False) -> SignedIn | None:
    """The request's session; `consistent` for a POST, whose action must work on the account as it is (a page view
    reads it at half the cost, from a replica that may lag a moment behind)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import portal_sessions

    store = gateway().store
    return portal_sessions.signed_in(store, store, session_cookie(event), now=utc_now(), consistent=consistent)


def refreshed(who: SignedIn) -> SignedIn:
    """The session with the account as the action just left it: read consistently, as an eventually consistent read
    right after the write may answer with the account before it (the saved field shown as it was)."""
    import dataclasses

    from sms_gateway.bootstrap import gateway

    account = gateway().store.get_account(who.account.account_id, consistent=True)
    return dataclasses.replace(who, account=account) if account is not None else who


def csrf_ok(who: SignedIn, form: Mapping[str, str]) -> bool:
    from sms_gateway.logic.portal_sessions import csrf_matches

    return csrf_matches(who.token, form.get(CSRF_FIELD))


def own_origin(event: Any) -> str:
    """The portal's origin as the browser sees it: API Gateway sets X-Forwarded-Proto and passes the Host on."""
    headers = event.headers or {}
    scheme = (headers.get("x-forwarded-proto") or "https").split(",")[0].strip().lower()
    host = headers.get("host") or event.request_context.domain_name
    return f"{scheme}://{host}".lower()


def same_origin(event: Any) -> bool:
    """A POST must say it comes from the portal's own origin: browsers send Origin with every form POST (Referer
    when an old one does not); a request with neither, or another site's, is refused."""
    headers = event.headers or {}
    origin = headers.get("origin")
    if origin is None:
        referer = urlsplit(headers.get("referer") or "")
        if not referer.scheme or not referer.netloc:
            return False
        origin = f"{referer.scheme}://{referer.netloc}"
    return origin.strip().lower() == own_origin(event)


def read_form(event: Any) -> dict[str, str]:
    """A form POST's fields (the first value of each name); anything but a URL-encoded form is refused."""
    content_type = ((event.headers or {}).get("content-type") or "").split(";")[0].strip().lower()
    if content_type != FORM_MEDIA_TYPE:
        raise UnsupportedMediaType(f"portal forms are sent as {FORM_MEDIA_TYPE}, not {content_type or 'nothing'}")
    try:
        pairs = parse_qsl(request_text(event), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as error:
        raise InvalidRequest(f"the form has too many fields (at most {MAX_FORM_FIELDS})") from error
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def is_local_stack() -> bool:
    from sms_gateway.settings import get_settings

    return get_settings().stage == "local"


def portal_cookie(name: str, value: str | None, *, path: str = PORTAL_PATH) -> Cookie:
    """A portal cookie; None clears it. HttpOnly (no script reads it), SameSite=Strict (never sent with a request
    another site starts, docs/portal.md says why), Secure except on the local stack (plain http)."""
    return Cookie(
        name=name,
        value=value or "",
        path=path,
        secure=not is_local_stack(),
        http_only=True,
        same_site=SameSite.STRICT_MODE,
        max_age=None if value else 0,
    )


def session_cookie_header(token: str | None) -> Cookie:
    return portal_cookie(SESSION_COOKIE, token)


def html_response(
    status: int, body: str, *, headers: Mapping[str, str] | None = None, cookies: list[Cookie] | None = None
) -> Response[Any]:
    return Response(
        status_code=status, content_type=HTML, body=body, headers={**PAGE_HEADERS, **(headers or {})}, cookies=cookies
    )


def redirect(location: str, *, cookies: list[Cookie] | None = None) -> Response[Any]:
    """303: the browser follows with a GET, so a form is never sent twice by a reload."""
    return Response(status_code=303, headers={**PAGE_HEADERS, "Location": location}, body="", cookies=cookies)


def refusal(status: int, message: str) -> Response[Any]:
    """A request refused before any page code ran: nothing was read or changed."""
    link = f'<p><a href="{esc(LOGIN_PATH)}">Sign in</a></p>' if status == 401 else ""
    return html_response(status, page_html(title="Not allowed", body=link, error=message))


def render_error(error: GatewayError) -> Response[Any]:
    """The api's error renderer for /portal paths (unknown page, oversized form, ...): an HTML page."""
    page = page_html(title="Something went wrong", body="", error=error.message)
    return html_response(status_for(error), page, headers=error_headers(error))


# ------------------------------------------------------------------ static assets


def asset(name: str) -> tuple[bytes, str, str] | None:
    """(content, content type, short hash) of a file in assets/, or None; only names listed there are served."""
    return _assets().get(name)


@cache
def _assets() -> dict[str, tuple[bytes, str, str]]:
    """Every servable asset, read once per container. Cached whole, not per name asked for: a cache keyed by the
    requested name kept every unknown name anyone sent (an unauthenticated request grew the api's memory)."""
    found: dict[str, tuple[bytes, str, str]] = {}
    for path in ASSETS_DIR.iterdir():
        if path.is_file() and path.suffix in ASSET_TYPES:
            content = path.read_bytes()
            found[path.name] = (content, ASSET_TYPES[path.suffix], hashlib.sha256(content).hexdigest()[:12])
    return found


def asset_url(name: str) -> str:
    found = asset(name)
    return f"{ASSETS_PATH}/{name}?v={found[2]}" if found else f"{ASSETS_PATH}/{name}"


@router.get(f"{ASSETS_PATH}/<name>", include_in_schema=False)
def static_asset(name: str) -> Response[Any]:
    found = asset(name)
    if found is None:
        return html_response(404, page_html(title="Not found", body="", error=f"No portal asset {name!r}."))
    content, content_type, version = found
    versioned = (router.current_event.query_string_parameters or {}).get("v") == version
    headers = {
        "Cache-Control": VERSIONED_ASSET_CACHE if versioned else UNVERSIONED_ASSET_CACHE,
        "X-Content-Type-Options": "nosniff",
        "ETag": f'"{version}"',
    }
    # Text only (ASSET_TYPES): the body travels as it is, never base64.
    return Response(status_code=200, content_type=content_type, body=content.decode(), headers=headers)

"""One pooled httpx client and one event loop per container thread, reused across invocations."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import httpx

from sms_gateway.adapters.http_streams import ACCEPT_ENCODING, StreamTransport
from sms_gateway.domain.text import readable_json
from sms_gateway.errors import UpstreamError
from sms_gateway.settings import get_settings

T = TypeVar("T")
_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        _local.workers = 0
    # Store calls run in the loop's default executor (asyncio.to_thread): its default size, min(32, cores + 4),
    # would cap the dispatcher's concurrent DynamoDB calls far below its in-flight submits.
    workers = get_settings().dispatch_concurrency
    if _local.workers != workers:
        previous: ThreadPoolExecutor | None = getattr(_local, "executor", None)
        _local.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sms-gateway-io")
        loop.set_default_executor(_local.executor)
        _local.workers = workers
        if previous is not None:
            previous.shutdown(wait=False)
    return loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on this thread's long-lived loop: pooled connections survive between invocations."""
    return _loop().run_until_complete(coroutine)


# Failures before the request left us: the upstream cannot have the message.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.LocalProtocolError,
)


def no_answer(upstream: str, error: httpx.TransportError) -> UpstreamError:
    """A submit that got no answer: transient and unavailable (the fallback upstream may take it), unless the
    request may have reached the upstream (a timeout or a cut connection while writing it or awaiting the
    answer): then the upstream may have taken the message (`maybe_taken`)."""
    what = "timed out" if isinstance(error, httpx.TimeoutException) else f"unreachable: {error}"
    return UpstreamError(
        f"{upstream} {what}", permanent=False, unavailable=True, maybe_taken=not isinstance(error, _NOT_SENT)
    )


def scrubbed(text: str, secrets: Iterable[str | None], *, limit: int = 200) -> str:
    """An upstream's text (an error answer) without our credentials in it, then cut to `limit` characters: some
    quote what they were sent (Jasmin's validation errors quote a malformed password), and the text goes into our
    error messages and logs. Each secret is replaced as sent and percent-encoded, before the cut, so none is left
    in part."""
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote_plus(secret, safe="")}:
                text = text.replace(form, "***")
    return text[:limit]


def unreadable_take(upstream: str, what: str) -> UpstreamError:
    """A 2xx answer we cannot read (no message id, a body a proxy rewrote or cut): the upstream took the request and
    may be sending the message, so it is handled as no answer after the request left (`maybe_taken`): never offered
    again, elsewhere or there, nor failed and refunded while it may be delivered."""
    return UpstreamError(f"{upstream} {what}", permanent=False, unavailable=False, maybe_taken=True)


def answer_json(response: httpx.Response) -> Any:
    """An upstream's JSON answer, its strings readable (`domain.text.readable_json`): an id or error message in it
    holding a lone surrogate escape is stored or logged as text. ValueError when it is not JSON."""
    return readable_json(response.content)


def answered_id(upstream: str, response: httpx.Response, field: str, *, of_type: type = object) -> str:
    """The upstream's id for the message in its 2xx JSON answer's `field`, which must be an `of_type` (any value by
    default, rendered as text). An answer without one (not JSON, the field missing, null, empty or of another type) is
    an `unreadable_take`: never the id "None" or "", which every such message would share, so one's delivery report
    would settle another."""
    try:
        upstream_id = answer_json(response)[field]
    except (ValueError, KeyError, TypeError, IndexError):
        upstream_id = None
    if upstream_id is None or upstream_id == "" or not isinstance(upstream_id, of_type):
        raise unreadable_take(upstream, f"answered {response.status_code} without a {field}")
    return str(upstream_id)


def not_sent_there(what: str, *, error_code: str | None = None) -> UpstreamError:
    """The upstream cannot send this message however often it is asked (no route for the number, a country our
    account there is not enabled for, more parts than it sends): its limit, not the message's fault. Unavailable: the
    route's fallback is offered it at once; permanent: without a fallback (or when the fallback refuses it too) it
    fails at once and is refunded, rather than come back to the same refusal."""
    return UpstreamError(what, permanent=True, unavailable=True, error_code=error_code)


def refuses_our_account(what: str) -> UpstreamError:
    """The upstream refuses our account with it (credentials, permissions, balance): our setup, not the message. The
    route's fallback is offered it at once; without one it is retried (transient) while the operator fixes it."""
    return UpstreamError(what, permanent=False, unavailable=True)


# 502 Bad Gateway and 504 Gateway Timeout: answers of a proxy or load balancer (or a hosted API's own edge) in front of
# the upstream. They say two things: the proxy could not connect to the upstream (refused, connect timed out: nothing
# was sent), or it passed our request on and lost the answer (a cut connection, an upstream slow to answer: the
# upstream may have the message). A 503 says the request was not served.
GATEWAY_ERROR_STATUSES = frozenset({502, 504})
# How a 502/504 is taken: `unavailable` (nothing was sent: the fallback is offered the message at once) or
# `maybe_taken` (the upstream may have it: never offered to the fallback). Kannel and Jasmin never answer 502/504
# themselves: which one their proxy means only the operator knows (their `gateway_errors` setting).
GATEWAY_ERRORS_UNAVAILABLE = "unavailable"
GATEWAY_ERRORS_MAYBE_TAKEN = "maybe_taken"
GATEWAY_ERRORS = (GATEWAY_ERRORS_UNAVAILABLE, GATEWAY_ERRORS_MAYBE_TAKEN)


def gateway_errors_setting(name: str, value: Any, default: str = GATEWAY_ERRORS_UNAVAILABLE) -> str:
    """A `gateway_errors` setting: how a proxy's 502/504 in front of the upstream is taken; absent, `default`."""
    if value is None:
        return default
    if not isinstance(value, str) or value not in GATEWAY_ERRORS:
        raise ValueError(
            f"upstream {name!r}: gateway_errors is {GATEWAY_ERRORS_UNAVAILABLE!r} (a proxy's 502/504 means it could "
            f"not reach the upstream: the fallback is offered the message) or {GATEWAY_ERRORS_MAYBE_TAKEN!r} (it "
            f"passed our request on: the upstream may have it), default {default!r}, not {value!r}"
        )
    return value


def flag_setting(name: str, key: str, value: Any, default: bool) -> bool:
    """An upstream's yes-or-no setting: JSON true or false, or the text "true" or "false" (any case); absent, `default`.
    Anything else is refused: read with bool(), the text "false" (or 0, "no") would count as true, or false."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"upstream {name!r}: {key} is true or false (default {str(default).lower()}), not {value!r}")


# 4xx answers no upstream gives about a message, only about our setup there: credentials a proxy in front of it asks
# for (401, 407), a url that does not serve its API (404 Not Found, 405 Method Not Allowed: a wrong path or port).
SETUP_ERROR_STATUSES = frozenset({401, 404, 405, 407})
# 408 Request Timeout: the server (or a proxy) gave up waiting for our request before it had it whole: nothing was sent.
REQUEST_TIMEOUT = 408


def not_about_the_message(
    what: str,
    response: httpx.Response,
    *,
    gateway_errors: str,
    maybe_taken_statuses: frozenset[int] = frozenset(),
) -> UpstreamError | None:
    """The failure a submit's answer says when it is not about the message (a 429, a 5xx, our setup's 4xx), None for
    any other status; `what` says it in words. A 502/504 with `gateway_errors` `maybe_taken`, or one of
    `maybe_taken_statuses` (an upstream whose own 500 may have done the request), is handled as no answer after the
    request left (`maybe_taken`): never offered to the fallback, only asked again of an upstream that deduplicates our
    reference. Any other 5xx, and a 408, is unavailable (the fallback is offered it at once); a 429 is a throttle (the
    same upstream later, after its `Retry-After`); a 401, 404, 405 or 407 refuses our setup (`refuses_our_account`).
    Until session 34 the last four, and a 408, were taken by most adapters as refusals of the message: every message
    failed and was refunded while a proxy asked for credentials or the url was wrong, the fallback never asked."""
    status = response.status_code
    if status in SETUP_ERROR_STATUSES:
        return refuses_our_account(what)
    if status == REQUEST_TIMEOUT:
        return UpstreamError(what, permanent=False, unavailable=True)
    if status != 429 and status < 500:
        return None
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if status in maybe_taken_statuses or (
        gateway_errors == GATEWAY_ERRORS_MAYBE_TAKEN and status in GATEWAY_ERROR_STATUSES
    ):
        return UpstreamError(what, permanent=False, retry_after=retry_after, unavailable=True, maybe_taken=True)
    return UpstreamError(what, permanent=False, retry_after=retry_after, unavailable=status >= 500)


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing an answer sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    """httpx's client without a cookie jar. One client serves every upstream (and one every client webhook), so a
    jar would carry one server's cookies into later requests nobody meant to be stateful; and reading each
    answer's headers into it (http.cookiejar) cost about 0.1 ms of CPU per submit."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("the upstream client keeps no cookies")


def async_client() -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(_local, "client", None)
    if client is None:
        settings = get_settings()
        client = CookielessClient(
            timeout=httpx.Timeout(settings.upstream_read_timeout, connect=settings.upstream_connect_timeout, pool=30.0),
            # httpx's own transport cost about twice the CPU per submit (docs/dispatch.md).
            transport=StreamTransport(settings.dispatch_concurrency),
            follow_redirects=False,
            # Some upstreams compress their answers; ask only for what the transport decodes (httpx's default would
            # add br and zstd when their packages are installed).
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        _local.client = client
    return client


def close() -> None:
    client: httpx.AsyncClient | None = getattr(_local, "client", None)
    if client is not None:
        run(client.aclose())
        _local.client = None


def forget_thread_loop() -> None:
    """What a container's death does to this thread's work: its loop and client are dropped, never run again, so
    tasks an invocation left on the loop (a killed one's in-flight submits) never resume in the next invocation
    (tests that model a death; the next call makes a new loop and client)."""
    _local.loop = None
    _local.client = None


# A day: longer than any queue can hide a record, and a cap on what an answer can make us wait.
MAX_RETRY_AFTER_SECONDS = 86_400.0


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds, or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    # `Infinity`, `1e999` and `nan` are floats to Python, and no wait anyone can keep.
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else None

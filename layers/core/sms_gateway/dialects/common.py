"""What every dialect needs: body parsing with readable errors, and one error table per dialect."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel, ValidationError, WithJsonSchema

from sms_gateway import deadlines
from sms_gateway.bootstrap import send_dependencies
from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import Account, Batch, KeyClaim, Recipient, SendCommand, StoredAnswer, utc_now
from sms_gateway.domain.text import SURROGATE_ESCAPE, readable
from sms_gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    TooManyAttempts,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from sms_gateway.logic.idempotency import SEND_LEASE, canonical_body, fingerprint, run_once
from sms_gateway.logic.send import Accepted, Rejection, accept_send, undo_standing_send, with_opted_out
from sms_gateway.ports import PageBudget

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")

# A text that is not blank, as the OpenAPI document states what the validators take (a schema cannot run them).
NOT_BLANK = r"\S"

# HTTP status of each domain error code, shared by the JSON dialects unless a dialect overrides it.
HTTP_STATUS = {
    "unauthorized": 401,
    "too_many_attempts": 429,
    "invalid_request": 400,
    "invalid_sender": 400,
    "invalid_recipient": 400,
    "insufficient_credits": 402,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "conflict": 409,
    "callback_rejected": 400,
    "upstream_error": 502,
    # Like Twilio's 21610 (a send to an unsubscribed number): a 400 naming the numbers and their STOP.
    "opted_out": 400,
    # The send could not be finished in time or queued, and was undone: nothing changed, try again.
    "unavailable": 503,
    # Something failed unexpectedly: the request may have been done in part.
    "internal_error": 500,
}


# The idempotency key the request being answered holds (set around its send by `idempotent`/`under_claim`).
_key_claim: ContextVar[KeyClaim | None] = ContextVar("key_claim", default=None)


def int_as_text(value: Any) -> Any:
    """A whole JSON number where the dialect reads text, as its digits: PHP and JavaScript clients send a shortcode,
    partner id, order id or one-time code unquoted as often as quoted. A boolean is no number (though Python's bool is
    an int): it is left for validation to refuse, not turned into the text "True". A whole float (`48974.0`, as
    JSON.NET writes a double) is its integer's digits, as send times read it; a fraction is left to be refused."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def blank_is_none(value: Any) -> Any:
    """An unset optional field as clients write it: null (JSON.NET), "" (PHP), or blanks, read as absent."""
    if isinstance(value, str):
        return value.strip() or None
    return value


def send_time_schema(description: str) -> WithJsonSchema:
    """The OpenAPI schema of a send time the dialect reads from a string or a JSON number (yyyyMMdd[HHmm[ss]] digits
    unquoted, as PHP clients send them): `description` says which forms it takes."""
    return WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "null"}],
            "default": None,
            "description": description,
        }
    )


def key_claim() -> KeyClaim | None:
    """The idempotency key the request being answered holds, if any."""
    return _key_claim.get()


def accept(account: Account, command: SendCommand) -> Accepted:
    """Every dialect's send: the use case, which counts the messages it stores for the dashboard (MessagesAccepted:
    logic.send)."""
    return accept_send(
        account,
        command,
        send_dependencies(),
        now=utc_now(),
        claim=_key_claim.get(),
        out_of_time=deadlines.invocation_out_of_time(),
    )


def cancel(account_id: str, reference_id: int) -> tuple[Batch, int]:
    """Every dialect's cancel of a scheduled batch (logic.batches.cancel_batch): the batch and the credits its answer
    names. Under an idempotency key (`idempotent`, the portal's run_form_once with `under_claim`) its claim of the
    refund's answer is the key's, so that a retry under the key after the request died answers the refund again."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic import batches

    wiring, claim = gateway(), _key_claim.get()
    return batches.cancel_batch(
        messages=wiring.store,
        scheduler=wiring.scheduler,
        account_id=account_id,
        reference_id=reference_id,
        now=utc_now(),
        key_mark=claim.mark if claim is not None else None,
    )


@dataclass(frozen=True)
class Standing:
    """How a dialect answers a refused retry with the send that stands under its key (undo_refused_send)."""

    account: Account
    # The recipients the request asks for, as far as they still resolve (logic.compose.recipients_still_named).
    recipients: Callable[[], Sequence[Recipient]]
    # The dialect's answer to a send, as the first request would have given it.
    answer: Callable[[Accepted], Response[Any]]


def undo_refused_send(
    account: Account, recipients: Callable[[], Sequence[Recipient]], answer: Callable[[Accepted], StoredAnswer]
) -> Callable[[KeyClaim], StoredAnswer | None]:
    """run_once's `undo` for a send of `account`: what a resumed request left standing, undone when the retry that
    resumed it is refused (logic.send.undo_standing_send); None when nothing of it stands, else `answer` of the send
    that stands, with the request's `recipients` that opted out named as refused, as the first answer named them
    (logic.send.with_opted_out): the one place every dialect and the portal get them from."""

    def undo(claim: KeyClaim) -> StoredAnswer | None:
        deps = send_dependencies()
        standing = undo_standing_send(account.account_id, claim.reference_id, deps, now=utc_now(), mark=claim.mark)
        if standing is None:
            return None
        return answer(with_opted_out(account, standing, recipients(), deps.opt_outs))

    return undo


def stored_answer(response: Response[Any]) -> StoredAnswer:
    """A dialect's response as an idempotency key keeps it."""
    return StoredAnswer(
        status_code=response.status_code,
        body=str(response.body or ""),
        content_type=str(response.headers.get("Content-Type", content_types.APPLICATION_JSON)),
    )


def under_claim(claim: KeyClaim | None, produce: Callable[[], T]) -> T:
    """Runs a send holding `claim`: the batch `accept` makes is the one the key names."""
    token = _key_claim.set(claim)
    try:
        return produce()
    finally:
        _key_claim.reset(token)


def describe_validation_error(error: ValidationError) -> str:
    """The first five problems, each `field: what is wrong`, or what is wrong alone for a check across fields (no
    location: naming one would blame a field the client may have written right, or not sent). A validator's own
    ValueError reads in its words, without pydantic's "Value error, " before them."""
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"])
        what = str(item["ctx"]["error"]) if item["type"] == "value_error" else item["msg"]
        problems.append(f"{where}: {what}" if where else what)
    return "; ".join(problems)


MAX_BODY_BYTES = 256 * 1024


def request_text(event: Any) -> str:
    """The request body as text, refused when over 256 KB or not UTF-8 (before anything is parsed or stored); a
    byte order mark before it is no part of it (without_bom)."""
    try:
        return without_bom(request_bytes(event).decode())
    except UnicodeDecodeError as error:
        raise InvalidRequest("the request body is not UTF-8 text") from error


def without_bom(text: str) -> str:
    """`text` without the byte order mark Windows tools write before UTF-8 (PowerShell's Out-File, .NET's
    Encoding.UTF8, Notepad), which RFC 8259 section 8.1 lets a JSON parser ignore: it was refused as no JSON (400,
    "Unexpected UTF-8 BOM"), and a form's first field was read as another name, until session 35."""
    return text.removeprefix("\ufeff")


def request_bytes(event: Any) -> bytes:
    """The request body as it was sent, refused when over 256 KB or, when API Gateway base64-encoded it, not base64:
    for a body whose parts name their own charsets (a multipart form), which is no one text."""
    _refuse_oversize(event)
    raw = str(event.body or "")
    if not event.is_base64_encoded:
        return raw.encode()
    try:
        return base64.b64decode(raw)
    except ValueError as error:
        raise InvalidRequest("the request body is not valid base64") from error


def joined_fields(fields: list[tuple[str, str]]) -> dict[str, str]:
    """A form's fields; one given more than once is its values joined by commas, as API Gateway joins a query
    string's (so `mobile=...&mobile=...` sends to both, where the last one alone was kept)."""
    values: dict[str, list[str]] = {}
    for name, value in fields:
        values.setdefault(name, []).append(value)
    return {name: ",".join(given) for name, given in values.items()}


def urlencoded_fields(text: str, where: str) -> dict[str, str]:
    """A urlencoded form's fields, or a query string's; a percent-escape that is not UTF-8 (an ISO-8859-1 `Caf%E9`)
    is refused, not read as a replacement character."""
    try:
        return joined_fields(parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict"))
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"{where} is not UTF-8 text: {error}") from error


def query_fields(event: Any) -> dict[str, str]:
    """The query string as it was sent (rawQueryString), read as a form is: `+` is a space, a parameter given twice
    is its values joined by commas, and a percent-escape that is not UTF-8 is refused (InvalidRequest). API
    Gateway's queryStringParameters decode such an escape to a replacement character, which would be read (sent,
    stored, charged) as the text."""
    return urlencoded_fields(str(event.get("rawQueryString") or ""), "the query string")


def client_address(event: Any) -> str | None:
    """The address the request came from as API Gateway saw it (requestContext.http.sourceIp), which a client cannot
    set, unlike an X-Forwarded-For header; None for an event without one."""
    http = (event.get("requestContext") or {}).get("http") or {}
    address = http.get("sourceIp")
    return address if isinstance(address, str) else None


def callback_text(event: Any) -> str:
    """An upstream callback's body as text, in the charset its Content-Type names (Kannel posts an MO that it did not
    recode in UTF-16BE), else as UTF-8 with what cannot be read replaced: an upstream's adapter reads the text from
    fields of its own (Kannel's `text_hex`), and a body that cannot be read must not refuse the callback (the MO
    would be lost)."""
    data = request_bytes(event)
    if not event.is_base64_encoded:
        return str(event.body or "")
    charset = _charset(str((event.headers or {}).get("content-type") or ""))
    if charset:
        # ValueError: UnicodeDecodeError, and what codecs such as `undefined`, `idna` or `punycode` raise of their own
        # (a plain UnicodeError failed the callback with a 5xx before its token was looked at, until 2026-12-07).
        with contextlib.suppress(LookupError, ValueError):
            # A codec that makes lone surrogates (UTF-7's "+2AA-", unicode_escape's "\\ud800"): U+FFFD in their place.
            return readable(data.decode(charset))
    return data.decode("utf-8", errors="replace")


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


def _refuse_oversize(event: Any) -> None:
    raw = event.body or ""
    size = len(raw) * 3 // 4 if event.is_base64_encoded else len(raw.encode())
    if size > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the request body is {size} bytes, over the {MAX_BODY_BYTES // 1024} KB limit")


def _no_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity as floats; JSON (RFC 8259) has no such numbers, and a body with
    # them is as malformed as any other (it was refused, if at all, as a wrong field).
    raise ValueError(f"{name} is not a JSON value (JSON numbers are finite)")


def parse_json_body(raw: str | None) -> Any:
    if raw is None or not raw.strip():
        raise InvalidRequest("the request body is empty: expected a JSON object")
    try:
        payload = json.loads(raw, parse_constant=_no_constant)
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise InvalidRequest("the request body is JSON nested too deeply to read") from error
    # A client's text with a lone surrogate is refused (it can send its text again); an upstream's is read with U+FFFD
    # in its place (domain/text.py).
    if SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(payload, ensure_ascii=False).encode()
        except UnicodeEncodeError as error:
            raise InvalidRequest(
                "the request body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair): "
                "it is not text"
            ) from error
    return payload


def json_request(event: Any, model: type[ModelT]) -> ModelT:
    """A JSON body parsed into `model`. A declared content type must be JSON; none at all is read as JSON,
    since some sample clients misspell the header."""
    content_type = str((event.headers or {}).get("content-type") or "").lower()
    if content_type and "json" not in content_type:
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {content_type!r}")
    return parse_model(model, parse_json_body(request_text(event)))


def parse_model(model: type[ModelT], payload: Any) -> ModelT:
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidRequest(describe_validation_error(error)) from error


def page_size_parameter(raw: str | None, name: str, *, default: int, maximum: int) -> int:
    """A listing's page size query parameter: `default` when absent, else a whole number from 1 to `maximum`
    (surrounding blanks and leading zeros allowed). Its length is checked before `int()`, which refuses text of
    over 4300 digits with a ValueError that no route catches (a 500); the parameter is echoed cut short."""
    if raw is None:
        return default
    text = raw.strip()
    digits = text.lstrip("0") or "0"
    if not ascii_digits(text) or len(digits) > len(str(maximum)) or not 1 <= int(digits) <= maximum:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise InvalidRequest(f"`{name}` must be a whole number from 1 to {maximum}, not {shown!r}")
    return int(digits)


def json_prefix(text: str, max_bytes: int) -> str:
    """The longest start of `text` that `json_response` writes in at most `max_bytes`: it writes ASCII, so any
    other character takes 6 bytes (`\\u2122`) or 12 (a surrogate pair), and a quote or control character 2 to 6."""
    size = 0
    for end, character in enumerate(text):
        size += len(json.dumps(character)) - 2
        if size > max_bytes:
            return text[:end]
    return text


# An answer lists at most this many rejected entries, each as given up to this many bytes as the answer's JSON
# writes it (9bits' `invalid_count` counts them all): a keyed request's answer is kept whole in one DynamoDB item
# (400 KB), and a group create of 10,000 invalid members made an answer too large to keep, so the request failed
# after the group was stored. Bytes, not characters: JSON writes each non-ASCII character as a 6-byte escape, and
# 1000 entries of 64 '™' were again too large to keep; so were a session-key order's 999 invalid recipients of 80
# '™' each, echoed whole until 2026-12-06 (its key then stayed in progress, and a retry got 409, not the answer).
MAX_LISTED_INVALID = 1000
MAX_ECHOED_BYTES = 64
MAX_REASON_BYTES = 200


def echoed(raw: str) -> str:
    """An entry the client gave, as an answer quotes it: cut to MAX_ECHOED_BYTES as the answer's JSON writes it."""
    return json_prefix(raw, MAX_ECHOED_BYTES)


def invalid_entries(rejected: Sequence[Rejection], field: str) -> list[dict[str, str]]:
    """The rejected entries an answer lists, `field` naming each as given (echoed) with its reason: at most
    MAX_LISTED_INVALID of them."""
    return [
        {field: echoed(rejection.raw), "reason": json_prefix(rejection.reason, MAX_REASON_BYTES)}
        for rejection in rejected[:MAX_LISTED_INVALID]
    ]


# Lambda refuses a synchronous answer over 6 MB (the handler's result as JSON, 6,291,556 bytes): the invocation fails
# and API Gateway answers the client 5xx, on every try of that request. An answer that lists stored text (the inbox,
# failed notifications with their payloads) is kept within ANSWER_BUDGET as Lambda returns it: its page ends before
# the entry that would fill LISTED_BUDGET (page_budget), with its cursor to that entry; the rest of the answer
# (status, cursor, headers) takes far less than what is left. One entry always fits: a DynamoDB item is at most
# 400 KB, which no answer writes in more than 2.8 MB (a control character, 7 bytes). Until 2026-12-07 a page of 100 of
# the longest SMS (255 parts of Devanagari) was 10.5 MB, in either listing.
ANSWER_BUDGET = 5 * 1024 * 1024
LISTED_BUDGET = ANSWER_BUDGET - 64 * 1024


def answer_bytes(value: Any) -> int:
    """The bytes `value` takes in an answer as Lambda returns it, with the comma before it in a list: json_response
    writes it (ASCII: a non-ASCII character is a 6-byte escape), and the handler's result carries that body as a
    JSON string, each quote and backslash escaped again."""
    return len(json.dumps(json.dumps(value, separators=(",", ":")))) - 1


def page_budget(entry: Callable[[T], Any]) -> PageBudget[T]:
    """A listing's page budget (PageBudget) for entries that the answer writes as `entry` makes them."""
    return PageBudget(size_of=lambda item: answer_bytes(entry(item)), max_bytes=LISTED_BUDGET)


def json_response(status_code: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status_code,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers,
    )


def error_headers(error: GatewayError, *, challenge: str | None = None) -> dict[str, str] | None:
    """Retry-After for an error that passes (too many logins, a send undone for want of time); Allow for a method
    the path does not take; WWW-Authenticate `challenge` on a 401, where the dialect has a scheme to name (RFC 9110
    section 11.6.1): a client that sends its credentials only when challenged needs it to send them at all."""
    if isinstance(error, Unauthorized) and challenge is not None:
        return {"WWW-Authenticate": challenge}
    if isinstance(error, TooManyAttempts | Unavailable):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, MethodNotAllowed):
        return {"Allow": ", ".join(error.allowed)}
    return None


def status_for(error: GatewayError) -> int:
    return HTTP_STATUS.get(error.code, 400)


def _fingerprinted_body(event: Any) -> str:
    """The body as a request's fingerprint reads it: its text as canonical_body writes it; a body that is not UTF-8
    (a multipart form with a field in its own charset, which the shortcode dialect reads), its bytes in base64."""
    body = request_bytes(event)
    try:
        # Without a byte order mark, as it is read: a retry written with one is the same request.
        return canonical_body(without_bom(body.decode()))
    except UnicodeDecodeError:
        return base64.b64encode(body).decode()


def idempotent(
    event: Any,
    account_id: str,
    key: str | None,
    produce: Callable[[], Response],
    *,
    lease: timedelta | None = SEND_LEASE,
    standing: Standing | None = None,
    query: Mapping[str, str] | None = None,
    retry_failed_at_once: bool = False,
) -> Response[Any]:
    """Runs a send once per idempotency key (see logic.idempotency): a repeat gets the first answer back.
    The fingerprint covers method, path, query and body (the body as text, decoded when API Gateway base64-encoded
    it, as it does for a body without a Content-Type; a JSON body as its value: canonical_body), so the same key
    with another request is refused.
    `query`: the query's parameters as the dialect reads them (the shortcode dialect: query_fields), so that a
    request is told from another by what it asks; by default API Gateway's queryStringParameters, which the other
    dialects read. A key stored before 2026-12-06 (without a fingerprint version) is compared with the fingerprint
    of queryStringParameters, as it was made then: a retry of its request still gets its answer after the deploy.
    `lease`: how long before a request that died holding the key is taken over and its batch finished; None for
    a request that cannot be finished that way (it holds its key until the key expires).
    `standing`: a send's answer to the send that stands under the key (the batch and its messages as stored), for a
    retry that is refused while some of the send its died request made stands (undo_refused_send); None for a
    request that makes no send (a group's creation).
    `retry_failed_at_once`: run_once's, for a cancel (its retry finishes it)."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now

    # Read only under a key: an operation with no body of its own (a cancel) answers an unkeyed request as it did
    # before it took a key, whatever body came with it (run_once does not fingerprint a request without one).
    body = _fingerprinted_body(event) if key is not None else ""
    gateway_query = dict(event.query_string_parameters or {})

    def request_fingerprint(parameters: Mapping[str, str]) -> str:
        return fingerprint(event.http_method, event.path, json.dumps(dict(parameters), sort_keys=True), body)

    def answer(claim: KeyClaim | None) -> StoredAnswer:
        return stored_answer(under_claim(claim, produce))

    stored = run_once(
        gateway().store,
        scope=account_id,
        key=key,
        request_fingerprint=request_fingerprint(gateway_query if query is None else query),
        # A key stored before 2026-12-06 hashed API Gateway's queryStringParameters whatever the dialect reads.
        unversioned_fingerprint=request_fingerprint(gateway_query),
        now=utc_now(),
        produce=answer,
        lease=lease,
        undo=undo_refused_send(standing.account, standing.recipients, lambda sent: stored_answer(standing.answer(sent)))
        if standing
        else None,
        retry_failed_at_once=retry_failed_at_once,
    )
    return Response(status_code=stored.status_code, content_type=stored.content_type, body=stored.body)

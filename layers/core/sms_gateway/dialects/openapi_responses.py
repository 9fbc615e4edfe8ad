"""What the OpenAPI document says each operation answers, the credentials it takes and the parameters it reads itself.

Dialects build their answers as dicts in the seeds' exact shapes and parse their own parameters (so errors keep
the dialect's shape), so Powertools cannot see either; they are written down here, once, and `openapi.py` adds
them when the document is asked for. tests/e2e/test_openapi_conformance.py holds the running stack to them."""

from __future__ import annotations

from typing import Any

from sms_gateway.dialects.common import NOT_BLANK
from sms_gateway.dialects.ninebits_inbox import MAX_LIMIT as MAX_INBOX_LIMIT
from sms_gateway.dialects.openapi import REQUIRED_FIELDS
from sms_gateway.logic.idempotency import MAX_KEY_LENGTH
from sms_gateway.logic.webhook_retries import NOTIFICATION_ID

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
ARRAY: Schema = {"type": "array"}
OBJECT: Schema = {"type": "object"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
NULLABLE_INTEGER: Schema = {"type": ["integer", "null"]}


def shape(optional: dict[str, Schema] | None = None, **required: Schema) -> Schema:
    """A JSON object with these fields (all present), and perhaps the optional ones; more fields may follow."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


# ------------------------------------------------------------------ errors, per dialect

# A send refused for invalid numbers lists each of them too (`invalid`, as the dry run does).
NINEBITS_ERROR = shape({"invalid_count": INTEGER, "invalid": ARRAY}, status_code=INTEGER, message=STRING)
SESSION_ERROR = shape({"invalid_recipients": ARRAY}, result={"const": "KO"}, error=STRING)
# The dialects whose errors are HTTP errors: their body.
HTTP_ERRORS: dict[str, Schema] = {"9bits": NINEBITS_ERROR, "session-key": SESSION_ERROR}
# The shortcode family answers every outcome as HTTP 200, an error with its code in the body.
SHORTCODE_ERROR = shape({"response-details": STRING}, **{"response-code": INTEGER, "response-description": STRING})

# What an operation can be refused for, as domain error codes (sms_gateway/errors.py); each dialect's own table
# (dialect_statuses) turns them into the HTTP statuses listed, so a status is listed only where the operation can
# answer it (tests/integration/test_openapi_statuses.py asks every operation for each). Every operation: bad input,
# credentials, an unexpected failure.
EVERY_OPERATION = ("invalid_request", "unauthorized", "internal_error")
# An operation that reads a request body: one over the limit, or of a type the dialect does not read.
READS_BODY = ("payload_too_large", "unsupported_media_type")
# An operation whose path names a record of the account's.
NAMES_A_RECORD = ("not_found",)
# The sends, which charge credits (and undo one that could not be stored or queued in time).
CHARGED: set[tuple[str, str]] = {("/ng/v1/sendsms", "post"), ("/sms", "post")}
# Errors only some operations of a dialect answer: (path, method) -> domain error codes.
EXTRA_ERRORS: dict[tuple[str, str], tuple[str, ...]] = {("/login", "get"): ("too_many_attempts",)}
# Changes that conflict without an Idempotency-Key (every operation that takes one conflicts when it is reused for
# another request, IDEMPOTENT): a record in a state the change does not apply to (a batch no longer scheduled, a
# notification not dead), or another change that keeps winning (a group's members, a webhook token rotated
# meanwhile). An order the session-key family can no longer remove is its seed's 404, not listed here.
CONFLICTS: set[tuple[str, str]] = {
    ("/ng/v1/batches/{reference_id}", "delete"),
    ("/ng/v1/groups/{group_id}/members", "post"),
    ("/ng/v1/groups/{group_id}/members", "delete"),
    ("/ng/v1/settings/webhooks", "put"),
    ("/ng/v1/webhooks/failures/{notification_id}/resend", "post"),
}
# Operations that answer `unavailable` (nothing changed, retry after Retry-After) besides the sends (CHARGED: one
# that could not be stored or queued in time is undone): those that write a group in a transaction DynamoDB can
# leave undecided, or read one whose members keep changing meanwhile (a send or a dry run naming it in `to`).
GROUPS_READ_OR_WRITTEN: set[tuple[str, str]] = {
    ("/ng/v1/sendsms", "post"),
    ("/ng/v1/batches/dry_run", "post"),
    ("/ng/v1/groups", "post"),
    ("/ng/v1/groups/{group_id}", "get"),
    ("/ng/v1/groups/{group_id}", "delete"),
    ("/ng/v1/groups/{group_id}/members", "post"),
    ("/ng/v1/groups/{group_id}/members", "delete"),
}
# Cancels of a scheduled batch, which answer `unavailable` when other writes kept moving its cost while they gave
# back what it took for messages never stored: the batch is cancelled, and the cancel sent again finishes it.
CANCELS: set[tuple[str, str]] = {("/ng/v1/batches/{reference_id}", "delete"), ("/sms/{order_id}", "delete")}
# Errors that pass: the answer says when to come back (dialects/common.error_headers).
RETRY_AFTER_STATUSES = (429, 503)
RETRY_AFTER: dict[str, Any] = {
    "required": True,
    "description": "seconds to wait before the same request can succeed",
    "schema": {"type": "integer", "minimum": 0},
}
ERROR_DESCRIPTIONS = {
    400: "invalid request: the message names what is wrong",
    401: "missing or invalid credentials",
    402: "not enough credits",
    404: "no such resource for this account",
    409: "conflict: an Idempotency-Key reused for another request, a record in a state the change does not apply "
    "to, or another change made meanwhile (nothing changed)",
    413: "request body over 256 KB",
    415: "unsupported Content-Type",
    429: "too many failed logins for this username in the current 15-minute window: retry after Retry-After",
    500: "an unexpected failure, logged under the request id the message names; the request may be done in part",
    503: "not done, nothing changed (a send that could not be stored or queued in time, undone: nothing sent or "
    "charged; a group that kept changing while it was read or written; a cancel whose give-back other writes kept "
    "moving, or whose refunds they kept refusing: the batch is cancelled, and the cancel again finishes it): retry "
    "after Retry-After",
}


def dialect_statuses(dialect: str) -> tuple[dict[str, int], int]:
    """The dialect's HTTP status of each domain error code, and its status for a code the table leaves out."""
    if dialect == "session-key":
        from sms_gateway.dialects import sessionkey

        return sessionkey.HTTP_STATUS, sessionkey.DEFAULT_STATUS
    from sms_gateway.dialects import common

    return common.HTTP_STATUS, 400


def challenge_for(path: str) -> str | None:
    """The WWW-Authenticate challenge the operation's 401 carries, as its dialect's render_error sends it."""
    from sms_gateway.dialects import ninebits, sessionkey

    if path == "/login":
        return sessionkey.LOGIN_CHALLENGE
    return ninebits.CHALLENGE if dialect_of(path) == "9bits" else None


# ------------------------------------------------------------------ successes

_NINEBITS_STATUS = {"status_code": INTEGER, "message": STRING}
_GROUP = {
    **_NINEBITS_STATUS,
    "group_id": STRING,
    "name": STRING,
    "member_count": INTEGER,
    "created_at": STRING,
    "updated_at": STRING,
}
_CHANGED_MEMBERS = {**_GROUP, "invalid_count": INTEGER, "invalid": ARRAY}
_FAILURE = {**_NINEBITS_STATUS, "id": STRING, "kind": STRING, "state": STRING, "attempts": INTEGER}

SHORTCODE_SEND = shape(
    responses={"type": "array", "items": shape(**{"response-code": INTEGER, "response-description": STRING})}
)
SHORTCODE_DLR = shape(
    **{
        "response-code": INTEGER,
        "message-id": STRING,
        "response-description": STRING,
        "delivery-status": INTEGER,
        "delivery-description": STRING,
        "delivery-tat": NULLABLE_STRING,
        "delivery-networkid": NULLABLE_INTEGER,
        "delivery-time": NULLABLE_STRING,
    }
)
SHORTCODE_BALANCE = shape(**{"response-code": INTEGER, "credit": STRING, "partner-id": STRING})

# (path, method) -> (status, schema) of the success answer. Shortcode operations list their success body only:
# the family's error body is added to each as another shape of the same HTTP 200.
SUCCESSES: dict[tuple[str, str], tuple[int, Schema]] = {
    ("/ng/v1/sendsms", "post"): (
        200,
        shape({"refused": ARRAY}, **_NINEBITS_STATUS, reference_id=STRING, recipients_processed=INTEGER),
    ),
    ("/ng/v1/batches/dry_run", "post"): (
        200,
        shape(
            **_NINEBITS_STATUS,
            parts=INTEGER,
            encoding=STRING,
            ucs2_characters=ARRAY,
            characters_per_part=INTEGER,
            recipients=INTEGER,
            cost_per_recipient=ARRAY,
            total_cost=INTEGER,
            balance=INTEGER,
            balance_sufficient=BOOLEAN,
            invalid_count=INTEGER,
            invalid=ARRAY,
            would_be_accepted=BOOLEAN,
        ),
    ),
    ("/ng/v1/batches/{reference_id}", "get"): (
        200,
        shape(
            **_NINEBITS_STATUS,
            reference_id=STRING,
            status=STRING,
            **{"from": STRING},
            to={"type": "array", "items": STRING},
            body=STRING,
            recipients=INTEGER,
            counts=OBJECT,
            parts=INTEGER,
            encoding=STRING,
            cost=INTEGER,
            delivery_report=STRING,
            session_id=NULLABLE_STRING,
            ref_id=NULLABLE_STRING,
            sent_date=NULLABLE_STRING,
            created_at=STRING,
            send_at=NULLABLE_STRING,
        ),
    ),
    ("/ng/v1/batches/{reference_id}", "delete"): (
        200,
        shape(
            **_NINEBITS_STATUS,
            reference_id=STRING,
            status=STRING,
            refunded_credits=INTEGER,
            balance=NULLABLE_INTEGER,
        ),
    ),
    ("/ng/v1/batches/{reference_id}/delivery_report", "get"): (
        200,
        shape(**_NINEBITS_STATUS, reference_id=STRING, data=ARRAY, next=NULLABLE_STRING),
    ),
    ("/ng/v1/groups", "post"): (201, shape(**_GROUP, members=ARRAY, invalid_count=INTEGER, invalid=ARRAY)),
    ("/ng/v1/groups", "get"): (200, shape(**_NINEBITS_STATUS, data=ARRAY, next=NULLABLE_STRING)),
    ("/ng/v1/groups/{group_id}", "get"): (200, shape(**_GROUP, members=ARRAY)),
    ("/ng/v1/groups/{group_id}", "delete"): (200, shape(**_NINEBITS_STATUS, group_id=STRING)),
    ("/ng/v1/groups/{group_id}/members", "post"): (
        200,
        shape(**_CHANGED_MEMBERS, added=INTEGER, already_members=INTEGER),
    ),
    ("/ng/v1/groups/{group_id}/members", "delete"): (
        200,
        shape(**_CHANGED_MEMBERS, removed=INTEGER, not_members=INTEGER),
    ),
    ("/ng/v1/webhooks/failures", "get"): (200, shape(**_NINEBITS_STATUS, data=ARRAY, next_cursor=NULLABLE_STRING)),
    ("/ng/v1/webhooks/failures/resend", "post"): (
        202,
        shape(**_NINEBITS_STATUS, resent=INTEGER, more=BOOLEAN),
    ),
    ("/ng/v1/webhooks/failures/{notification_id}/resend", "post"): (202, shape(**_FAILURE)),
    ("/sms", "post"): (
        201,
        shape(
            {"remaining_credits": INTEGER, "invalid_recipients": ARRAY},
            result={"const": "OK"},
            order_id=STRING,
            total_sent=INTEGER,
            internal_order_id=STRING,
        ),
    ),
    ("/sms/{order_id}", "get"): (200, shape(recipient_number=INTEGER, result={"const": "OK"}, recipients=ARRAY)),
    ("/sms/{order_id}", "delete"): (200, shape(result={"const": "OK"})),
    ("/status", "get"): (200, shape(money=NULLABLE_INTEGER, sms=ARRAY, email={"type": "null"})),
    ("/api/services/sendsms", "get"): (200, SHORTCODE_SEND),
    ("/api/services/sendsms", "post"): (200, SHORTCODE_SEND),
    ("/api/services/getdlr", "get"): (200, SHORTCODE_DLR),
    ("/api/services/getdlr", "post"): (200, SHORTCODE_DLR),
    ("/api/services/getbalance", "get"): (200, SHORTCODE_BALANCE),
    ("/api/services/getbalance", "post"): (200, SHORTCODE_BALANCE),
}
# GET /login answers `user_key;session_key` as plain text.
TEXT_SUCCESSES: dict[tuple[str, str], Schema] = {("/login", "get"): {"type": "string", "pattern": "^[^;]+;[^;]+$"}}

# ------------------------------------------------------------------ query parameters the dialects read themselves

_PAGE_SIZE: Schema = {"type": "integer", "minimum": 1, "maximum": 1000}
_CURSOR: Schema = STRING
_MESSAGE_STATUSES = [
    "accepted",
    "scheduled",
    "queued",
    "submitted",
    "delivered",
    "failed",
    "expired",
    "rejected",
    "cancelled",
]
_SHORTCODE_QUERY: dict[str, Schema] = {
    "apikey": STRING,
    "partnerID": STRING,
    "message": STRING,
    "shortcode": STRING,
    "mobile": STRING,
    "timeToSend": STRING,
    "messageID": STRING,
}
QUERY_PARAMETERS: dict[tuple[str, str], dict[str, Schema]] = {
    ("/ng/v1/batches/{reference_id}/delivery_report", "get"): {
        "status": {"type": "string", "enum": _MESSAGE_STATUSES},
        "page_size": _PAGE_SIZE,
        "next": _CURSOR,
    },
    ("/ng/v1/groups", "get"): {"page_size": _PAGE_SIZE, "next": _CURSOR},
    ("/ng/v1/webhooks/failures", "get"): {
        "state": {"type": "string", "enum": ["retrying", "dead", "resent", "delivered"]},
        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
        "cursor": _CURSOR,
    },
    ("/status", "get"): {
        "getMoney": {"type": "string", "enum": ["true", "false"]},
        "typeAliases": {"type": "string", "enum": ["true", "false"]},
    },
    ("/login", "get"): {"username": STRING, "password": STRING},
    ("/api/services/sendsms", "get"): _SHORTCODE_QUERY,
    ("/api/services/getdlr", "get"): _SHORTCODE_QUERY,
    ("/api/services/getbalance", "get"): _SHORTCODE_QUERY,
}


# ------------------------------------------------------------------ credentials, per dialect

# How each family authenticates (Swagger UI's Authorize button, and what a generated client sends). The shortcode
# family's apikey and partnerID are documented as the parameters they are (query or body), /login as its own.
SECURITY_SCHEMES: dict[str, Schema] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "the account's API token (the 9bits family)"},
    "user_key": {
        "type": "apiKey",
        "in": "header",
        "name": "user_key",
        "description": "the first half of GET /login's answer (the session-key family)",
    },
    "Session_key": {
        "type": "apiKey",
        "in": "header",
        "name": "Session_key",
        "description": "the second half of GET /login's answer (the session-key family)",
    },
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "9bits": [{"bearer": []}],
    "session-key": [{"user_key": [], "Session_key": []}],
}
UNAUTHENTICATED = {"/login"}
# The operations a repeat under the same key answers once (logic/idempotency.py; keyed on the path without its
# trailing slash).
IDEMPOTENT: set[tuple[str, str]] = {
    ("/ng/v1/sendsms", "post"),
    ("/ng/v1/groups", "post"),
    ("/sms", "post"),
    ("/api/services/sendsms", "get"),
    ("/api/services/sendsms", "post"),
    # A cancel's retry under its key answers the refund of the first (logic.batches.cancel_batch, `key_mark`).
    ("/ng/v1/batches/{reference_id}", "delete"),
    ("/sms/{order_id}", "delete"),
}
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a repeat of the same request under the same key, for 24 hours, gets the first answer back and "
    "does nothing again; the key used for another request is a conflict",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "\\S"},
}


# The parameters routes declare (so Powertools documents them as the plain strings they are read as): what the
# dialect's own checks take of them.
# The patterns say it too to a client that takes `format` as a note (JSON Schema's default).
_DATE_OR_DATE_TIME: Schema = {
    "anyOf": [
        {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        {"type": "string", "format": "date-time", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}"},
        {"const": ""},
    ],
    "description": "a date-time without an offset is the account's time; empty is no bound; `from` after `to` is "
    "refused",
}
DECLARED_PARAMETERS: dict[tuple[str, str], dict[str, Schema]] = {
    ("/ng/v1/inbounds", "get"): {
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_INBOX_LIMIT},
        "from": _DATE_OR_DATE_TIME,
        "to": _DATE_OR_DATE_TIME,
    },
    ("/ng/v1/webhooks/failures/{notification_id}/resend", "post"): {
        # The ids the gateway makes (dlr_<message_id>_<sequence>, in_<id>): ':' is taken only if sent unescaped.
        "notification_id": {"type": "string", "pattern": NOTIFICATION_ID.pattern.replace(":", "")},
    },
}


def dialect_of(path: str) -> str:
    if path.startswith("/api/services"):
        return "shortcode"
    if path in ("/login", "/status") or path == "/sms" or path.startswith("/sms/"):
        return "session-key"
    return "9bits"


def responses_for(path: str, method: str, documented: dict[str, Any], *, reads_body: bool) -> dict[str, Any]:
    """The operation's responses: its success (what `documented` says, unless the table knows better) and the errors
    it can answer in its dialect (`reads_body`: it has a request body). Powertools' 422 goes: a parameter that fails
    validation is answered 400 in the dialect."""
    key = (path.rstrip("/") or "/", method)
    responses = {status: body for status, body in documented.items() if status not in ("422", "200")}
    dialect = dialect_of(path)
    if key in TEXT_SUCCESSES:
        responses["200"] = {
            "description": "the session: user_key;session_key",
            "content": {"text/plain": {"schema": TEXT_SUCCESSES[key]}},
        }
    elif key in SUCCESSES:
        status, schema = SUCCESSES[key]
        if dialect == "shortcode":
            schema = {"anyOf": [schema, SHORTCODE_ERROR]}
        responses[str(status)] = {"description": "success", "content": {"application/json": {"schema": schema}}}
    elif dialect == "shortcode":
        responses["200"] = _json("not a service of this API", SHORTCODE_ERROR)
    elif "200" in documented:
        responses["200"] = documented["200"]
    if dialect in HTTP_ERRORS:
        for status in error_statuses(path, method, reads_body=reads_body):
            responses[str(status)] = _json(ERROR_DESCRIPTIONS[status], HTTP_ERRORS[dialect])
            if status in RETRY_AFTER_STATUSES:
                responses[str(status)]["headers"] = {"Retry-After": RETRY_AFTER}
        challenge = challenge_for(path)
        if challenge is not None:
            responses["401"]["headers"] = {"WWW-Authenticate": _challenge_header(challenge)}
    return responses


def error_statuses(path: str, method: str, *, reads_body: bool) -> list[int]:
    """The HTTP statuses of the errors the operation can answer, in its dialect's table."""
    key = (path.rstrip("/") or "/", method)
    codes = [*EVERY_OPERATION, *EXTRA_ERRORS.get(key, ())]
    if reads_body:
        codes += READS_BODY
    if "{" in path:
        codes += NAMES_A_RECORD
    if key in IDEMPOTENT or key in CONFLICTS:
        codes.append("conflict")
    if key in CHARGED:
        codes += ("insufficient_credits", "unavailable")
    if key in GROUPS_READ_OR_WRITTEN or key in CANCELS:
        codes.append("unavailable")
    table, default = dialect_statuses(dialect_of(path))
    return sorted({table.get(code, default) for code in codes})


def _challenge_header(challenge: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": "the authentication scheme the operation takes, so a client that sends its credentials only "
        "when challenged sends them",
        "schema": {"type": "string", "const": challenge},
    }


def security_for(path: str) -> list[dict[str, list[str]]] | None:
    """The credentials the operation takes, if its family sends them as a security scheme."""
    return None if path in UNAUTHENTICATED else SECURITY.get(dialect_of(path))


def parameters_for(path: str, method: str, declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operation's parameters: those its route declares, with what the dialect's checks take of them, then the
    query and header parameters it reads itself (a shortcode service's required fields required)."""
    key = (path.rstrip("/") or "/", method)
    schemas = DECLARED_PARAMETERS.get(key, {})
    parameters = [
        {**parameter, "schema": schemas[parameter["name"]]} if parameter["name"] in schemas else parameter
        for parameter in declared
    ]
    names = {parameter["name"] for parameter in declared}
    required = REQUIRED_FIELDS.get(key[0], ())
    parameters += [
        {"name": name, "in": "query", "required": True, "schema": given(schema)}
        if name in required
        else {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in QUERY_PARAMETERS.get(key, {}).items()
        if name not in names
    ]
    return [*parameters, IDEMPOTENCY_KEY] if key in IDEMPOTENT else parameters


def given(schema: Schema) -> Schema:
    """A required field's schema: not null, and (a text being read stripped, a blank one as missing) not blank."""
    alternatives = [branch for branch in schema.get("anyOf", [schema]) if branch != {"type": "null"}]
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default", "type")}
    one = {**rest, **alternatives[0]} if len(alternatives) == 1 else {**rest, "anyOf": alternatives}
    return {**one, "pattern": NOT_BLANK}


def _json(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}

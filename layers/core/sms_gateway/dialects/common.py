"""What every dialect needs: body parsing with readable errors, and one error table per dialect."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel, ValidationError

from sms_gateway.errors import GatewayError, InvalidRequest

ModelT = TypeVar("ModelT", bound=BaseModel)

# HTTP status of each domain error code, shared by the JSON dialects unless a dialect overrides it.
HTTP_STATUS = {
    "unauthorized": 401,
    "invalid_request": 400,
    "invalid_sender": 400,
    "invalid_recipient": 400,
    "insufficient_credits": 402,
    "not_found": 404,
    "conflict": 409,
    "callback_rejected": 400,
    "upstream_error": 502,
}


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def parse_json_body(raw: str | None) -> Any:
    if raw is None or not raw.strip():
        raise InvalidRequest("the request body is empty: expected a JSON object")
    try:
        return json.loads(raw)
    except ValueError as error:
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from error


def parse_model(model: type[ModelT], payload: Any) -> ModelT:
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidRequest(describe_validation_error(error)) from error


def json_response(status_code: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status_code,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers,
    )


def status_for(error: GatewayError) -> int:
    return HTTP_STATUS.get(error.code, 400)

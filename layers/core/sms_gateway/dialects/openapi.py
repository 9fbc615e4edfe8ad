"""The OpenAPI document of the client API: Powertools' generated spec, with the request bodies we parse ourselves.

Each dialect parses its own body (so that errors keep the dialect's shape), so Powertools cannot see the
request models; they are added here, when the document is asked for, not at import time (cold start)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from pydantic import BaseModel

TITLE = "SMS gateway: 9bits, batches, shortcode and session-key dialects"
DOCS_PATH = "/v1/docs"
# Fields a request must give (in its body, or a GET in its query) that the model leaves optional because the same
# model reads a query string too; keyed on the path without a trailing slash: /getdlr/ reads what /getdlr reads.
_SHORTCODE_CREDENTIALS = ("apikey", "partnerID")
REQUIRED_FIELDS = {
    "/api/services/sendsms": (*_SHORTCODE_CREDENTIALS, "message", "shortcode", "mobile"),
    "/api/services/getdlr": (*_SHORTCODE_CREDENTIALS, "messageID"),
    "/api/services/getbalance": _SHORTCODE_CREDENTIALS,
}


def _request_bodies() -> dict[tuple[str, str], tuple[type[BaseModel], tuple[str, ...]]]:
    from sms_gateway.dialects import ninebits, ninebits_inbox, sessionkey, shortcode
    from sms_gateway.dialects.ninebits_webhooks import ResendAllRequest

    json_only = ("application/json",)
    # The shortcode family's clients post JSON, a form, or (PHP's CURLOPT_POSTFIELDS array) a multipart form.
    forms = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
    return {
        ("/ng/v1/sendsms", "post"): (ninebits.SendRequest, json_only),
        ("/ng/v1/batches/dry_run", "post"): (ninebits.SendRequest, json_only),
        ("/ng/v1/groups", "post"): (ninebits.GroupRequest, json_only),
        ("/ng/v1/groups/{group_id}/members", "post"): (ninebits.MembersRequest, json_only),
        ("/ng/v1/groups/{group_id}/members", "delete"): (ninebits.MembersRequest, json_only),
        ("/ng/v1/settings/webhooks", "put"): (ninebits_inbox.WebhookSettingsRequest, json_only),
        ("/ng/v1/webhooks/failures/resend", "post"): (ResendAllRequest, json_only),
        ("/api/services/sendsms", "post"): (shortcode.ShortcodeParams, forms),
        ("/api/services/getdlr", "post"): (shortcode.ShortcodeParams, forms),
        ("/api/services/getbalance", "post"): (shortcode.ShortcodeParams, forms),
        ("/sms", "post"): (sessionkey.SendRequest, json_only),
    }


class DocumentedResolver(APIGatewayHttpResolver):
    request_bodies: Callable[[], dict[tuple[str, str], tuple[type[BaseModel], tuple[str, ...]]]] = staticmethod(
        _request_bodies
    )

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        from sms_gateway.dialects.openapi_responses import given

        schema = super().get_openapi_schema(*args, **kwargs)
        document = schema.model_dump(by_alias=True, exclude_none=True, mode="json")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        bodies = self.request_bodies()
        _document_operations(document, bodies)
        registered: dict[type[BaseModel], str] = {}
        for path, operations in document.get("paths", {}).items():
            for method, operation in operations.items():
                key = (path.rstrip("/") or "/", method)
                if key not in bodies:
                    continue
                model, content_types = bodies[key]
                body_schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
                components.update(body_schema.pop("$defs", {}))
                if model not in registered:
                    # Under its own name, or its module's where another model took that name first.
                    qualified = f"{model.__module__}.{model.__name__}"
                    registered[model] = qualified if model.__name__ in components else model.__name__
                    components[registered[model]] = body_schema
                required = list(body_schema.get("required", []))
                required += [name for name in REQUIRED_FIELDS.get(key[0], ()) if name not in required]
                # A field the model leaves optional that the request must give: neither null nor blank.
                properties = {
                    name: given(schema) if name in REQUIRED_FIELDS.get(key[0], ()) else schema
                    for name, schema in body_schema.get("properties", {}).items()
                }
                operation_schema = {**body_schema, "properties": properties, "required": required}
                operation["requestBody"] = {
                    "required": True,
                    "content": {content_type: {"schema": operation_schema} for content_type in content_types},
                }
        return type(schema).model_validate(document)


def _document_operations(document: dict[str, Any], bodies: dict[tuple[str, str], Any]) -> None:
    """Each operation's answers (success and its dialect's errors), the credentials it takes and the parameters it
    reads itself."""
    from sms_gateway.dialects.openapi_responses import SECURITY_SCHEMES, parameters_for, responses_for, security_for

    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            reads_body = (path.rstrip("/") or "/", method) in bodies
            operation["responses"] = responses_for(path, method, operation.get("responses", {}), reads_body=reads_body)
            security = security_for(path)
            if security is not None:
                operation["security"] = security
            parameters = parameters_for(path, method, operation.get("parameters", []))
            if parameters:
                operation["parameters"] = parameters

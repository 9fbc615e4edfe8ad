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
# Fields a body must have that its model leaves optional because the same model reads a query string too (keyed,
# as the bodies are, on the path without a trailing slash: /api/services/getdlr/ reads what /getdlr reads).
_SHORTCODE_CREDENTIALS = ("apikey", "partnerID")
REQUIRED_BODY_FIELDS = {
    ("/api/services/sendsms", "post"): (*_SHORTCODE_CREDENTIALS, "message", "shortcode", "mobile"),
    ("/api/services/getdlr", "post"): (*_SHORTCODE_CREDENTIALS, "messageID"),
    ("/api/services/getbalance", "post"): _SHORTCODE_CREDENTIALS,
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
        schema = super().get_openapi_schema(*args, **kwargs)
        document = schema.model_dump(by_alias=True, exclude_none=True, mode="json")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        _document_operations(document)
        bodies = self.request_bodies()
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
                required += [name for name in REQUIRED_BODY_FIELDS.get(key, ()) if name not in required]
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        content_type: {"schema": {**body_schema, "required": required}}
                        for content_type in content_types
                    },
                }
        return type(schema).model_validate(document)


def _document_operations(document: dict[str, Any]) -> None:
    """Each operation's answers (success and its dialect's errors), the credentials it takes and the parameters it
    reads itself."""
    from sms_gateway.dialects.openapi_responses import SECURITY_SCHEMES, parameters_for, responses_for, security_for

    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            operation["responses"] = responses_for(path, method, operation.get("responses", {}))
            security = security_for(path)
            if security is not None:
                operation["security"] = security
            declared = {parameter["name"] for parameter in operation.get("parameters", [])}
            extra = [parameter for parameter in parameters_for(path, method) if parameter["name"] not in declared]
            if extra:
                operation["parameters"] = [*operation.get("parameters", []), *extra]

"""The api function publishes an OpenAPI document for all four dialects and a Swagger UI page."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import load_event
from tests.integration.test_send_path import FakeContext, load_function


def get(path: str, query: dict[str, str] | None = None) -> dict:
    event = load_event("api-batch-read.json", YOUR_API_Token="unused")
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event.pop("pathParameters", None)
    if query:
        event["queryStringParameters"] = query
    return load_function("api").handler(event, FakeContext())


def test_the_openapi_document_covers_every_dialect_with_its_request_bodies(aws):
    response = get("/v1/openapi.json")
    assert response["statusCode"] == 200
    document = json.loads(response["body"])
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in ("/ng/v1/sendsms", "/ng/v1/batches/{reference_id}", "/api/services/sendsms", "/login", "/sms"):
        assert path in paths, path
    send_body = paths["/ng/v1/sendsms"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"from", "to", "message", "body", "content", "ref_id", "send_at"} <= set(send_body["properties"])
    assert "from" in send_body["required"]
    # A send time may be a JSON number too (yyyyMMdd digits, or Unix time in 9bits), as the dialects accept it: the
    # document said a date-time string only, so a generated client refused (or quoted) the number its user gave
    assert_send_time_takes_numbers(send_body["properties"]["send_at"])
    shortcode_body = paths["/api/services/sendsms"]["post"]["requestBody"]["content"]
    assert {"apikey", "partnerID", "message", "shortcode", "mobile"} <= set(
        shortcode_body["application/json"]["schema"]["properties"]
    )
    session_body = paths["/sms"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"message", "message_type", "recipient", "sender", "scheduled_delivery_time"} <= set(
        session_body["properties"]
    )
    assert_send_time_takes_numbers(session_body["properties"]["scheduled_delivery_time"])
    assert_send_time_takes_numbers(shortcode_body["application/json"]["schema"]["properties"]["timeToSend"])


def assert_send_time_takes_numbers(schema: dict[str, Any]) -> None:
    types = {option.get("type") for option in schema.get("anyOf", [schema])}
    assert {"string", "integer", "number", "null"} <= types, schema
    assert "yyyyMMdd" in schema.get("description", ""), schema


def test_swagger_ui_is_served_as_a_page_and_its_json_matches(aws):
    page = get("/v1/docs")
    assert page["statusCode"] == 200
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert "swagger" in page["body"].lower()
    as_json = json.loads(get("/v1/docs", {"format": "json"})["body"])
    assert "/ng/v1/sendsms" in as_json["paths"]


def test_each_operation_documents_its_answers_and_the_query_parameters_it_reads(aws):
    paths = json.loads(get("/v1/openapi.json")["body"])["paths"]
    send = paths["/ng/v1/sendsms"]["post"]["responses"]
    # Parameter errors are answered 400 in the dialect, never Powertools' 422.
    assert "422" not in send
    assert {"200", "400", "401", "402", "413", "415"} <= set(send)
    assert send["400"]["content"]["application/json"]["schema"]["required"] == ["message", "status_code"]
    assert paths["/sms"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["required"]
    assert paths["/sms"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]["properties"]["result"]
    # The shortcode family answers errors as HTTP 200 with its code in the body: both shapes are documented.
    shortcode = paths["/api/services/sendsms"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert len(shortcode["anyOf"]) == 2
    assert set(paths["/api/services/sendsms"]["get"]["responses"]) == {"200"}
    assert paths["/login"]["get"]["responses"]["200"]["content"]["text/plain"]
    # The errors that pass say when to come back: a locked-out login (only /login answers 429), an undone send.
    assert paths["/login"]["get"]["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert "429" not in paths["/sms"]["post"]["responses"]
    assert send["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    reports = {p["name"] for p in paths["/ng/v1/batches/{reference_id}/delivery_report"]["get"]["parameters"]}
    assert {"reference_id", "status", "page_size", "next"} <= reports
    send_body = paths["/ng/v1/sendsms"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [rule["required"] for rule in send_body["oneOf"]] == [["message"], ["body"], ["content"]]


def test_the_document_says_how_each_family_authenticates(aws):
    """Swagger UI's Authorize button and a client generated from the document need the credentials each family
    takes: a Bearer token for /ng/v1, the user_key and Session_key headers for the session-key family, and the
    Idempotency-Key header every send (and group create) honours."""
    document = json.loads(get("/v1/openapi.json")["body"])
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert {(s["in"], s["name"]) for s in schemes.values() if s["type"] == "apiKey"} == {
        ("header", "user_key"),
        ("header", "Session_key"),
    }
    missing = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security")
            if path.startswith("/ng/v1/") and security != [{"bearer": []}]:
                missing.append(f"{method.upper()} {path}: {security}")
            if path in ("/sms", "/sms/{order_id}", "/status") and security != [{"user_key": [], "Session_key": []}]:
                missing.append(f"{method.upper()} {path}: {security}")
            if path in ("/login",) or path.startswith("/api/services/"):
                assert "security" not in operation, path
    assert not missing, "\n".join(missing)
    for path, method in (
        ("/ng/v1/sendsms", "post"),
        ("/sms", "post"),
        ("/ng/v1/groups", "post"),
        ("/api/services/sendsms", "get"),
        ("/api/services/sendsms/", "post"),
    ):
        headers = [p for p in document["paths"][path][method]["parameters"] if p["in"] == "header"]
        assert [(p["name"], p["required"], p["schema"]["maxLength"]) for p in headers] == [
            ("Idempotency-Key", False, 255)
        ], path
    assert "parameters" not in document["paths"]["/ng/v1/batches/dry_run"]["post"]


def test_the_cancels_document_the_idempotency_key_they_honour(aws):
    """A cancel retried under its key answers the refund of the first (docs/dialects): a client generated from the
    document needs the header to send it."""
    paths = json.loads(get("/v1/openapi.json")["body"])["paths"]
    for path in ("/ng/v1/batches/{reference_id}", "/sms/{order_id}"):
        headers = [p for p in paths[path]["delete"]["parameters"] if p["in"] == "header"]
        assert [(p["name"], p["required"], p["schema"]["maxLength"]) for p in headers] == [
            ("Idempotency-Key", False, 255)
        ], path
        assert "409" in paths[path]["delete"]["responses"], path


def test_every_shortcode_post_documents_the_parameters_it_reads(aws):
    """POST getdlr and getbalance read the credentials (and getdlr the messageID) from the body, and each
    trailing-slash twin reads what its path without the slash reads: a client built from the document can send
    them, as JSON, a form or a multipart form (PHP's CURLOPT_POSTFIELDS array)."""
    paths = json.loads(get("/v1/openapi.json")["body"])["paths"]
    required = {
        "sendsms": ["apikey", "partnerID", "message", "shortcode", "mobile"],
        "getdlr": ["apikey", "partnerID", "messageID"],
        "getbalance": ["apikey", "partnerID"],
    }
    for service, fields in required.items():
        for path in (f"/api/services/{service}", f"/api/services/{service}/"):
            content = paths[path]["post"]["requestBody"]["content"]
            assert list(content) == ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"]
            for media in content.values():
                assert media["schema"]["required"] == fields, path
                assert set(fields) <= set(media["schema"]["properties"]), path


def schema_errors(document: dict, schema: dict, value: object) -> list[str]:
    """`value` against a schema of the document (its #/components refs resolved)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    full = {**document, "x-under-test": schema}
    registry = Registry().with_resource("urn:doc", Resource(contents=full, specification=DRAFT202012))
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:doc#/x-under-test"}, registry=registry, format_checker=jsonschema.FormatChecker()
    )
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(value)]


def test_what_the_document_calls_valid_is_what_the_dialects_take(aws):
    """A client (or a generated client's own validation) that trusts the document is not refused with a 400: the
    request schemas state what the dialects' validators take (the conformance run's positive_data_acceptance holds
    the stack to it), so values they always refuse are invalid in the document too."""
    document = json.loads(get("/v1/openapi.json")["body"])
    paths = document["paths"]

    def body(path: str, method: str = "post", media: str = "application/json") -> dict:
        return paths[path][method]["requestBody"]["content"][media]["schema"]

    def parameter(path: str, name: str, method: str = "get") -> dict:
        return next(p for p in paths[path][method]["parameters"] if p["name"] == name)["schema"]

    session_send = {"message": "hi", "recipient": ["2348020000000"]}
    refused = [
        (body("/sms"), {**session_send, "message_type": "X"}),
        (body("/sms"), {**session_send, "message_type": "LLL"}),
        (body("/sms"), {**session_send, "recipient": [2348020000000.5]}),
        (body("/sms"), {**session_send, "order_id": "A-1"}),
        (body("/sms"), {**session_send, "message": "   "}),
        (body("/sms"), {**session_send, "recipient": ""}),
        (body("/sms"), {**session_send, "recipient": ["  "]}),
        (parameter("/ng/v1/inbounds", "limit"), "all"),
        (parameter("/ng/v1/inbounds", "limit"), 101),
        (parameter("/ng/v1/inbounds", "from"), "yesterday"),
        (parameter("/ng/v1/inbounds", "to"), "2026-02-30"),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "callback_url": "https://c.example/"}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "delivery_report": "no"}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "delivery_report": "yess"}),
        (
            body("/ng/v1/sendsms"),
            {
                "from": "BRAND",
                "to": "1",
                "message": "hi",
                "callback_url": "https://c.example/",
                "delivery_report": "None",
            },
        ),
        (
            body("/ng/v1/sendsms"),
            {
                "from": "BRAND",
                "to": "1",
                "message": "hi",
                "callback_url": "https://c.example/",
                "delivery_report": None,
            },
        ),
        (body("/ng/v1/sendsms"), {"from": 10**16, "to": "1", "message": "hi"}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": True}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "ref_id": 1.5}),
        (body("/ng/v1/settings/webhooks", "put"), {"dlr_url": "ftp://example.com"}),
        (body("/ng/v1/settings/webhooks", "put"), {}),
        (parameter("/ng/v1/webhooks/failures/{notification_id}/resend", "notification_id", "post"), "a/b"),
        (body("/api/services/getdlr"), {"apikey": "k", "partnerID": "1", "messageID": " "}),
        (parameter("/api/services/sendsms", "message"), " "),
    ]
    nine_bits_send = {"from": "BRAND", "to": "1", "message": "hi"}
    taken = [
        (body("/sms"), {**session_send, "message_type": "LL", "order_id": None}),
        (body("/sms"), {**session_send, "message_type": ""}),
        (body("/sms"), {**session_send, "sender": 48974, "message": 482913}),
        (body("/sms"), {**session_send, "message_type": " ll "}),
        (body("/sms"), {**session_send, "recipient": [2348020000000.0, "2348030000000"]}),
        (body("/sms"), {**session_send, "recipient": 2348020000000}),
        (body("/ng/v1/sendsms"), {**nine_bits_send, "callback_url": "", "delivery_report": None}),
        (body("/ng/v1/sendsms"), {**nine_bits_send, "callback_url": None, "delivery_report": ""}),
        (body("/ng/v1/sendsms"), {**nine_bits_send, "callback_url": "", "delivery_report": "yes"}),
        (body("/ng/v1/sendsms"), {"from": 48974, "to": 1, "message": 123456, "ref_id": 1234567, "session_id": 67543}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "content": 123456}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "ref_id": 128152.0}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": [2348020000000.0], "message": "hi"}),
        (
            body("/ng/v1/sendsms"),
            {**nine_bits_send, "callback_url": "https://c.example/", "delivery_report": "Yes"},
        ),
        (body("/ng/v1/sendsms"), {**nine_bits_send, "delivery_report": "NONE"}),
        (body("/ng/v1/sendsms"), {"from": "BRAND", "to": "1", "message": "hi", "sent_date": 1704239437000}),
        (body("/ng/v1/groups"), {"name": "From Excel", "members": [2348020000000.0]}),
        (parameter("/ng/v1/inbounds", "limit"), 100),
        (parameter("/ng/v1/inbounds", "from"), "2026-01-02"),
        (parameter("/ng/v1/inbounds", "to"), "2026-01-02T10:30:00+01:00"),
        (body("/ng/v1/settings/webhooks", "put"), {"dlr_url": "https://example.com/dlr", "inbound_url": ""}),
        (body("/ng/v1/settings/webhooks", "put"), {"rotate_token": True}),
        (parameter("/ng/v1/webhooks/failures/{notification_id}/resend", "notification_id", "post"), "dlr_1_0"),
        (body("/api/services/getdlr", media="multipart/form-data"), {"apikey": "k", "partnerID": 1, "messageID": 7}),
    ]
    assert [value for schema, value in refused if not schema_errors(document, schema, value)] == []
    # Also to a client that takes `format` as a note, as JSON Schema does by default
    import jsonschema

    assert not jsonschema.Draft202012Validator(parameter("/ng/v1/inbounds", "from")).is_valid("yesterday")
    assert [
        (value, schema_errors(document, schema, value))
        for schema, value in taken
        if schema_errors(document, schema, value)
    ] == []
    # And what no schema can state is said in words: a webhook URL's host, checked without DNS.
    assert "public host" in body("/ng/v1/settings/webhooks", "put")["properties"]["dlr_url"]["anyOf"][0]["description"]

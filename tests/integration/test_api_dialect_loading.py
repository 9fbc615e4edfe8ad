"""The api function imports a dialect on its first request under that dialect's paths (cold start), and this changes
neither what a request gets nor the OpenAPI document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIALECTS = ("ninebits", "ninebits_inbox", "ninebits_webhooks", "shortcode", "sessionkey")

# Loads functions/api/app.py as Lambda does, resolves the given requests (no AWS behind them: each is refused before
# any store call), and reports the status codes, which dialects and OpenAPI modules were imported, and the document.
SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from sms_gateway.dialects import api
from sms_gateway.dialects.openapi import TITLE
class Context:
    function_name, function_version, memory_limit_in_mb, aws_request_id = "api", "$LATEST", 256, "r"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
statuses = []
for method, path in json.loads(sys.argv[2]):
    event = {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": {},
             "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                         "sourceIp": "203.0.113.1"}, "stage": "$default", "requestId": "r"},
             "isBase64Encoded": False}
    answer = module.handler(event, Context())
    statuses.append([answer["statusCode"], json.loads(answer["body"]) if answer.get("body") else None])
loaded = sorted(name.rsplit(".", 1)[1] for name in sys.modules if name.startswith("sms_gateway.dialects.")
                and name.rsplit(".", 1)[1] in json.loads(sys.argv[3]))
openapi_models = "aws_lambda_powertools.event_handler.openapi.models" in sys.modules
document = api.app.get_openapi_json_schema(title=TITLE, version="1.0.0") if sys.argv[4] == "document" else None
print(json.dumps({"statuses": statuses, "loaded": loaded, "openapi_models": openapi_models, "document": document}))
"""


def run_api(requests: list[tuple[str, str]], *, document: bool = False) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        PYTHONPATH=str(REPO / "layers" / "core"),
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="ERROR",
        POWERTOOLS_METRICS_NAMESPACE="SmsGateway",
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(REPO / "functions" / "api" / "app.py"),
            json.dumps(requests),
            json.dumps(DIALECTS),
            "document" if document else "-",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def test_loading_the_function_imports_no_dialect_and_no_openapi_models() -> None:
    loaded = run_api([])
    assert loaded["loaded"] == []
    assert loaded["openapi_models"] is False


@pytest.mark.parametrize(
    ("method", "path", "dialects", "status"),
    [
        # A 9bits send without a token: refused in the 9bits shape; only the 9bits send dialect imported.
        ("POST", "/ng/v1/sendsms", ["ninebits"], 401),
        ("GET", "/ng/v1/inbounds", ["ninebits", "ninebits_inbox"], 401),
        ("GET", "/api/services/sendsms", ["shortcode"], 200),
        ("GET", "/api/services/nothing", ["shortcode"], 200),
        ("GET", "/status", ["sessionkey"], 401),
        # An unknown path answers 404 in the 9bits shape, as before.
        ("GET", "/nowhere", ["ninebits"], 404),
    ],
)
def test_a_request_imports_only_its_dialect_and_gets_the_same_answer(method, path, dialects, status) -> None:
    result = run_api([(method, path)])
    assert result["loaded"] == dialects
    assert result["openapi_models"] is False
    assert result["statuses"][0][0] == status


def test_the_document_is_the_same_whatever_the_container_served_first() -> None:
    fresh = run_api([], document=True)["document"]
    after_other_dialects = run_api(
        [("GET", "/status"), ("GET", "/api/services/nothing"), ("GET", "/ng/v1/inbounds")], document=True
    )["document"]
    # Byte for byte: the paths in the same order too.
    assert after_other_dialects == fresh
    served = run_api([("GET", "/status"), ("GET", "/v1/openapi.json")])
    assert served["statuses"][1][0] == 200
    assert served["statuses"][1][1] == json.loads(fresh)
    assert sorted(served["loaded"]) == sorted(DIALECTS)

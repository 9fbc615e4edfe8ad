"""The X-Ray SDK is imported only when tracing is turned on (its import costs most of a cold start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAYER = Path(__file__).resolve().parents[2] / "layers" / "core"

SCRIPT = """
import sys
from sms_gateway.observability import capture_lambda_handler

def handler(event, context):
    return {"ok": event}

wrapped = capture_lambda_handler(handler)
print(wrapped is handler, "aws_xray_sdk.core" in sys.modules)
"""


@pytest.mark.parametrize(
    ("disabled", "expected"),
    [("true", "True False"), ("1", "True False"), ("false", "False True")],
)
def test_the_handler_is_traced_only_when_tracing_is_on(disabled: str, expected: str) -> None:
    # Given POWERTOOLS_TRACE_DISABLED as the template or an operator sets it
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": disabled, "PYTHONPATH": str(LAYER)}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    # When a handler module decorates its handler in a fresh process
    completed = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=False)
    # Then it is left alone and the SDK never imported when off, and wrapped by the Tracer when on
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == expected.split()

"""The client commands find a deployed stack's API by its CloudFormation outputs (moto)."""

from __future__ import annotations

import json

import pytest

from sms_gateway_tools.admin import TargetNotFound
from sms_gateway_tools.client_commands import resolve_api_url


def _stack(name: str, outputs: dict[str, str]) -> None:
    import boto3

    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_a_deployed_stack_s_api_url_output_is_used(aws, monkeypatch) -> None:
    # Given a deployed stack, and a URL variable left in this shell that the explicit --stack-name overrides
    _stack("gateway-prod", {"ApiUrl": "https://abc.execute-api.eu-west-1.amazonaws.com/", "TableName": "t"})
    monkeypatch.setenv("SMS_GATEWAY_API_URL", "http://127.0.0.1:3000")
    assert resolve_api_url(None, "gateway-prod") == "https://abc.execute-api.eu-west-1.amazonaws.com"


def test_a_stack_without_an_api_or_not_there_is_a_clear_error(aws) -> None:
    _stack("something-else", {"TableName": "t"})
    with pytest.raises(TargetNotFound, match="has no ApiUrl output"):
        resolve_api_url(None, "something-else")
    with pytest.raises(TargetNotFound, match="cannot read stack 'no-such-stack'"):
        resolve_api_url(None, "no-such-stack")

"""The client commands find a deployed stack's API by its CloudFormation outputs (moto)."""

from __future__ import annotations

import json

import pytest

from sms_gateway_tools.admin import TargetNotFound
from sms_gateway_tools.client_commands import resolve_api_url
from tests.conftest import REPO, FakeContext, load_event, load_function


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


def _documented_wrong_url_error() -> tuple[str, str]:
    """The error docs/cli.md shows for a send to an API URL with a path too many, and the API URL it was given."""
    doc = " ".join((REPO / "docs" / "cli.md").read_text().split())
    shown = doc.split("says so and exits `2`: `", 1)[1].split("...?`", 1)[0]
    url = shown.split("POST ", 1)[1].split(" ", 1)[0].removesuffix("/ng/v1/sendsms")
    return shown, url


def test_review_a_send_to_the_api_url_with_a_path_too_many_prints_the_error_docs_cli_md_shows(
    aws, monkeypatch, capsys
) -> None:
    import httpx

    from sms_gateway_tools import cli, client_commands
    from sms_gateway_tools.client_commands import GatewayClient

    api = load_function("api")
    shown, url = _documented_wrong_url_error()
    assert url.endswith("/ng/v1")

    # Given the gateway's API behind that URL: its own routes answer every path under /ng/v1 (ANY /ng/v1/{proxy+})
    def gateway(request: httpx.Request) -> httpx.Response:
        event = load_event("api-sendsms-9bits.json", YOUR_API_Token="sk_test")
        event["routeKey"] = event["requestContext"]["routeKey"] = "ANY /ng/v1/{proxy+}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = request.url.path
        event["pathParameters"] = {"proxy": request.url.path.removeprefix("/ng/v1/")}
        answer = api.handler(event, FakeContext())
        return httpx.Response(answer["statusCode"], headers=answer.get("headers"), content=answer["body"])

    transport = httpx.MockTransport(gateway)
    monkeypatch.setattr(client_commands, "_open_client", lambda _: GatewayClient(url, "sk_test", transport=transport))
    # When a message is sent with the API URL docs/cli.md's example gives
    code = cli.main(["send", "--from", "48974", "--to", "2348020000000", "--message", "Hi"])
    # Then it exits 2 with the error the docs show, word for word up to where the example stops
    assert code == client_commands.CANNOT_RUN
    assert capsys.readouterr().err.startswith(shown)

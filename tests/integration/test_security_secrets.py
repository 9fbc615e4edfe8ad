"""No secret a client or an operator hands us is stored in plain text: every item of the table is scanned for every
secret value (API tokens, API keys, passwords, session keys, upstream credentials) after each has been issued and
used through the real handlers. Upstream credentials live only in Parameter Store, as SecureString."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest

from tests.security_stack import Tenant, log_in, module_fixtures, populate, scan_items, simulator_callback

aws, gateway = module_fixtures()

# Knowingly stored as given, because we must present them, not check them (docs/webhooks.md): the token our calls
# to the client's webhook carry (`Authorization: Bearer`) and the key we sign those calls with. A hash could not be
# sent or signed with. They may appear in their own account item only, in the attributes named here.
OUTBOUND_SECRET_ATTRIBUTES = {"webhook_token", "webhook_secret"}


def _texts(item: dict[str, Any]) -> str:
    return json.dumps(item, default=lambda value: base64.b64encode(bytes(value)).decode(), sort_keys=True)


@pytest.fixture(scope="module")
def secrets_in_use(aws, gateway) -> dict[str, Any]:
    """Accounts holding every kind of credential, each used once, and every upstream's credentials configured."""
    from sms_gateway_tools.admin import issue_credential
    from tests.security_stack import upstream_configurations

    tenant: Tenant = populate(gateway, "Holder", "48974")
    account = tenant.account
    extra_token = issue_credential(account_id=account["account_id"], kind="token")["secret"]
    extra_apikey = issue_credential(account_id=account["account_id"], kind="apikey")["secret"]
    second_session = log_in(gateway, account)
    # Rotating the webhook credentials through the API answers them once; they must still not leak elsewhere.
    rotated = gateway.request(
        "PUT", "/ng/v1/settings/webhooks", headers=tenant.bearer, body={"rotate_token": True, "rotate_secret": True}
    )
    assert rotated.status == 200, rotated
    # And each credential is used, so whatever a successful use writes is in the table too.
    for token in (account["token"], extra_token):
        assert gateway.request("GET", "/ng/v1/groups", headers={"authorization": f"Bearer {token}"}).status == 200
    for apikey in (account["apikey"], extra_apikey):
        balance = {"apikey": apikey, "partnerID": account["partner_id"]}
        assert gateway.request("POST", "/api/services/getbalance", body=balance).json["response-code"] == 200
    for session in (tenant.session, second_session):
        assert gateway.request("GET", "/status", headers=session).status == 200
    inbound = {"message_id": "sim-1", "from": "2348020000000", "to": "48974", "text": "hi"}
    assert simulator_callback(gateway, "inbound", {**inbound, "received_at": "2026-01-02T10:00:00Z"}).status == 200
    upstream_secrets = {
        f"{name}.{key}": str(value)
        for name, config in upstream_configurations().items()
        for key, value in config.items()
        if key
        in {"secret", "password", "callback_token", "auth_token", "api_key", "token", "webhook_token", "webhook_secret"}
    }
    return {
        "account": account,
        "client_secrets": {
            "token": account["token"],
            "issued token": extra_token,
            "apikey": account["apikey"],
            "issued apikey": extra_apikey,
            "password": account["password"],
            "session key": tenant.session["Session_key"],
            "second session key": second_session["Session_key"],
        },
        "upstream_secrets": upstream_secrets,
        "webhook": {"token": rotated.json["webhook_token"], "secret": rotated.json["signing_secret"]},
    }


def test_no_client_or_upstream_secret_is_in_any_stored_item(aws, secrets_in_use):
    # Given every item of the table after all the credentials were issued and used
    items = [_texts(item) for item in scan_items(aws)]
    assert len(items) > 10
    # Then no item holds any of them, in any attribute
    found = [
        (label, item[:160])
        for label, secret in {**secrets_in_use["client_secrets"], **secrets_in_use["upstream_secrets"]}.items()
        for item in items
        if secret in item
    ]
    assert found == []


def test_the_outbound_webhook_secrets_are_only_in_their_own_account_item(aws, secrets_in_use):
    # The documented exception: stored as given, in the account item, and nowhere else
    for value in secrets_in_use["webhook"].values():
        holders = [item for item in scan_items(aws) if value in _texts(item)]
        assert len(holders) == 1, value[:6]
        (holder,) = holders
        attributes = {name for name, typed in holder.items() if value in _texts(typed)}
        assert attributes <= OUTBOUND_SECRET_ATTRIBUTES, attributes
        assert secrets_in_use["account"]["account_id"] in _texts(holder)


def test_upstream_credentials_are_secure_strings_in_parameter_store(aws, secrets_in_use):
    ssm = boto3.client("ssm")
    parameters = ssm.describe_parameters()["Parameters"]
    upstreams = [p for p in parameters if p["Name"].startswith(aws["UPSTREAM_PARAMETER_PREFIX"])]
    assert len(upstreams) >= 6
    for parameter in upstreams:
        assert parameter["Type"] == "SecureString", parameter["Name"]


def test_the_webhook_settings_show_prefixes_only_after_the_answer_that_rotated_them(aws, gateway, secrets_in_use):
    account = secrets_in_use["account"]
    answer = gateway.request("GET", "/ng/v1/settings/webhooks", headers={"authorization": f"Bearer {account['token']}"})
    assert answer.status == 200, answer
    for value in secrets_in_use["webhook"].values():
        assert value not in answer.text

"""No secret a client or an operator hands us, and none we hand out, is stored in plain text: every item of the
table is scanned for every secret value (API tokens, API keys, passwords, session keys, webhook tokens and signing
secrets, upstream credentials) after each has been issued and used through the real handlers. Upstream credentials
live only in Parameter Store, as SecureString; the webhook credentials we must present are sealed with the stack's
KMS key."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

from tests.security_stack import Tenant, log_in, module_fixtures, populate, scan_items, simulator_callback

aws, gateway = module_fixtures()


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
            "webhook token as created": account["webhook_token"],
            "signing secret as created": account["signing_secret"],
            "rotated webhook token": rotated.json["webhook_token"],
            "rotated signing secret": rotated.json["signing_secret"],
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


def test_the_webhook_credentials_are_sealed_with_the_stacks_key_for_their_own_account(aws, secrets_in_use):
    # Given the account item after its webhook token and signing secret were rotated
    from sms_gateway.bootstrap import gateway

    account_id = secrets_in_use["account"]["account_id"]
    typed = TypeDeserializer()
    items = [{name: typed.deserialize(value) for name, value in item.items()} for item in scan_items(aws)]
    (item,) = [item for item in items if item["pk"] == f"ACC#{account_id}" and item["sk"] == "ACCOUNT"]
    kms = boto3.client("kms")
    for attribute, answered in (
        ("webhook_token", secrets_in_use["webhook"]["token"]),
        ("webhook_secret", secrets_in_use["webhook"]["secret"]),
    ):
        sealed = item[attribute]
        # Then each attribute is KMS ciphertext, bound to the account and the attribute, holding what was answered
        assert sealed["scheme"] == "kms"
        blob = base64.b64decode(sealed["sealed"])
        context = {"account_id": account_id, "purpose": attribute}
        opened = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        assert opened["KeyId"] == aws["WEBHOOK_CREDENTIALS_KEY_ID"]
        assert opened["Plaintext"].decode() == answered
        # And it does not open for another account, or as the other attribute
        for wrong in ({**context, "account_id": "1"}, {**context, "purpose": "other"}):
            with pytest.raises(kms.exceptions.InvalidCiphertextException):
                kms.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)
        # And what the notifier opens is what was answered
        account = gateway().store.get_account(account_id)
        assert gateway().webhook_credentials.open(account_id, attribute, getattr(account, attribute)) == answered


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

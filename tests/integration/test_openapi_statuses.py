"""The OpenAPI document lists exactly the errors each operation answers, with the headers they carry.

A generated client (or a schemathesis run) trusts the document: a status it lists that the operation can never
answer is dead code and a false promise in every client, and a header it leaves out (WWW-Authenticate on a 401) is
one the client cannot read. Each operation of the document is asked here, through API Gateway's routing and the real
`api` handler on moto, the requests that draw each of these answers where the operation has one (no credentials, a
body over the limit, a body that is not JSON, a send from an account without credits); so an operation added to the
document, or a dialect whose answers change, is checked without being named."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext
from tests.security_stack import Answer, Gateway, create_account, log_in, module_fixtures

AIRTEL = "2348020000000"
GLO = "2348050000000"
SENDER = "BROKE"
# An id no record has (each path parameter's checks take it), so a request that changes something changes nothing.
UNKNOWN_ID = "999999999"
NOTIFICATION_ID = "dlr_999999999_0"
# Over dialects/common.MAX_BODY_BYTES (256 KB).
OVERSIZE = '{"padding": "' + "x" * (300 * 1024) + '"}'

aws, gateway = module_fixtures()


@pytest.fixture(scope="module")
def document(gateway: Gateway) -> dict[str, Any]:
    answer = gateway.request("GET", "/v1/openapi.json")
    assert answer.status == 200
    return dict(answer.json)


@pytest.fixture(scope="module")
def broke(gateway: Gateway) -> dict[str, Any]:
    """An account without credits: a send it asks for cannot be paid."""
    account = create_account("Broke", SENDER, credits=0)
    return {**account, "session": log_in(gateway, account)}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every operation of the HTTP dialects (the shortcode family answers every outcome as HTTP 200)."""
    for path, methods in document["paths"].items():
        if path.startswith(("/v1/", "/api/services/")):
            continue
        for method, operation in methods.items():
            yield method.upper(), path, operation


def concrete(path: str, ids: dict[str, str] | None = None) -> str:
    """The path with each parameter an id that names nothing, or the one `ids` gives it."""
    unknown = {"notification_id": NOTIFICATION_ID}
    return re.sub(r"\{(\w+)\}", lambda m: {**unknown, **(ids or {})}.get(m.group(1), UNKNOWN_ID), path)


def credentials(path: str, account: dict[str, Any]) -> dict[str, Any]:
    """The request's credentials in its family's way: a Bearer token, the session headers, /login's own."""
    if path.startswith("/ng/v1/"):
        return {"headers": {"authorization": f"Bearer {account['token']}"}}
    if path == "/login":
        return {"query": {"username": account["username"], "password": account["password"]}}
    return {"headers": dict(account["session"])}


def ask(
    gateway: Gateway,
    method: str,
    path: str,
    account: dict[str, Any] | None,
    ids: dict[str, str] | None = None,
    **request: Any,
) -> Answer:
    given = credentials(path, account) if account is not None else {}
    headers = {**given.get("headers", {}), **request.pop("headers", {})}
    return gateway.request(method, concrete(path, ids), query=given.get("query"), headers=headers, **request)


def header_names(answer: Answer) -> set[str]:
    return {name.lower() for name in answer.headers}


def documented_headers(operation: dict[str, Any], status: int) -> set[str]:
    return {name.lower() for name in operation["responses"].get(str(status), {}).get("headers", {})}


def test_every_refusal_of_credentials_is_documented_with_its_challenge(gateway, document):
    """A 401 that carries WWW-Authenticate (9bits' Bearer, /login's Basic) says so in the document, and one that
    does not (the session headers are no HTTP scheme) does not."""
    wrong = []
    for method, path, operation in operations(document):
        answer = ask(gateway, method, path, None)
        assert answer.status == 401, f"{method} {path}: {answer}"
        if "401" not in operation["responses"]:
            wrong.append(f"{method} {path}: 401 not documented")
        elif ("www-authenticate" in header_names(answer)) != ("www-authenticate" in documented_headers(operation, 401)):
            documented = sorted(documented_headers(operation, 401))
            wrong.append(f"{method} {path}: answers with {sorted(header_names(answer))}, documents {documented}")
    assert not wrong, "\n".join(wrong)


def refusals(gateway: Gateway, document: dict[str, Any], account: dict[str, Any], status: int, **request: Any):
    """Each operation whose answer to `request` and whose document disagree on `status`."""
    wrong = []
    for method, path, operation in operations(document):
        answer = ask(gateway, method, path, account, **dict(request))
        if (answer.status == status) != (str(status) in operation["responses"]):
            wrong.append(f"{method} {path}: answered {answer.status}, documents {sorted(operation['responses'])}")
    return wrong


def test_only_the_operations_that_read_a_body_document_413(gateway, document, broke):
    headers = {"content-type": "application/json"}
    wrong = refusals(gateway, document, broke, 413, headers=headers, body=OVERSIZE)
    assert not wrong, "\n".join(wrong)


def test_only_the_operations_that_refuse_a_content_type_document_415(gateway, document, broke):
    headers = {"content-type": "text/plain"}
    wrong = refusals(gateway, document, broke, 415, headers=headers, body="hello")
    assert not wrong, "\n".join(wrong)


# A request each operation would act on, were its account able to pay: a send, a group and its members.
PLAUSIBLE = {
    "from": SENDER,
    "to": [AIRTEL],
    "message": "hello",
    "sender": SENDER,
    "recipient": [AIRTEL],
    "message_type": "N",
    "name": "Regulars",
    "members": [AIRTEL],
    "state": "dead",
}


def test_only_the_operations_that_charge_credits_document_402(gateway, document, broke):
    """A send the account cannot pay is 402 in 9bits (the session-key family says 400, as its seed does)."""
    wrong = refusals(gateway, document, broke, 402, body=PLAUSIBLE)
    assert not wrong, "\n".join(wrong)


def test_only_the_operations_that_name_a_record_document_404(gateway, document, broke):
    """An id the account has no record under is 404; an operation that names no record has nothing to miss (an
    unknown group in a send's `to` is a 400 naming it)."""
    wrong = refusals(gateway, document, broke, 404, body=PLAUSIBLE)
    assert not wrong, "\n".join(wrong)


FUNDED_SENDER = "FUNDED"


@pytest.fixture(scope="module")
def funded(gateway: Gateway) -> dict[str, Any]:
    """An account that can pay, with a batch sent at once (no longer cancellable) and a notification still being
    retried (not resendable): records a change can conflict with."""
    from sms_gateway.bootstrap import gateway as wiring
    from sms_gateway.domain.models import iso, utc_now
    from sms_gateway.ports import WebhookFailure

    account = create_account("Funded", FUNDED_SENDER, credits=100_000)
    bearer = {"authorization": f"Bearer {account['token']}"}
    sent = gateway.request("POST", "/ng/v1/sendsms", headers=bearer, body={**PLAUSIBLE, "from": FUNDED_SENDER})
    assert sent.status == 200, sent
    now = iso(utc_now())
    retrying = WebhookFailure(
        account_id=account["account_id"],
        notification_id=NOTIFICATION_ID,
        kind="dlr",
        state="retrying",
        attempts=1,
        last_error="client webhook answered 500",
        first_failed_at=now,
        last_attempt_at=now,
        next_attempt_at=now,
        notification={"kind": "dlr", "id": NOTIFICATION_ID},
    )
    assert wiring().store.save_webhook_failure(retrying, only_from=frozenset({"retrying", "resent", "dead"}))
    reference_id = sent.json["reference_id"]
    return {**account, "session": log_in(gateway, account), "sent": {"reference_id": reference_id}}


def new_group(gateway: Gateway, account: dict[str, Any]) -> str:
    bearer = {"authorization": f"Bearer {account['token']}"}
    made = gateway.request("POST", "/ng/v1/groups", headers=bearer, body={"name": "Probed", "members": [AIRTEL]})
    assert made.status == 201, made
    return str(made.json["group_id"])


def acting_on(gateway: Gateway, account: dict[str, Any], group_id: str | None = None) -> dict[str, Any]:
    """What a request acts on: the account's sent batch (as a batch and as an order), its notification being retried,
    a group of its own (`group_id`, else a new one), named in the path and in a send's `to`."""
    group = group_id or new_group(gateway, account)
    ids = {
        "reference_id": account["sent"]["reference_id"],
        "order_id": account["sent"]["reference_id"],
        "notification_id": NOTIFICATION_ID,
        "group_id": group,
    }
    # One member the group has and one it has not, so that both member changes write.
    sent_by = {"from": FUNDED_SENDER, "sender": FUNDED_SENDER}
    return {"ids": ids, "body": {**PLAUSIBLE, **sent_by, "to": [AIRTEL, group], "members": [AIRTEL, GLO]}}


@contextmanager
def transactions_never_decided() -> Iterator[None]:
    """DynamoDB cancelling every transaction for a conflict with other writes, as it does while other requests write
    the same items (moto never does): a change that loses every time."""
    from sms_gateway.adapters import dynamodb_groups, dynamodb_transactions

    def conflicted(client: Any, writes: list[dict[str, Any]], token: str | None = None) -> list[dict[str, Any]]:
        return [{"Code": "TransactionConflict"} for _ in writes]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamodb_transactions, "transact", conflicted)
        for module in (dynamodb_transactions, dynamodb_groups):
            patch.setattr(module, "back_off", lambda attempt: None)
        yield


@contextmanager
def rotated_meanwhile() -> Iterator[None]:
    """Each consistent read of an account shows a webhook token another change has replaced since (a rotation read
    just before another one wrote)."""
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.domain.models import SealedSecret

    read = DynamoStore.get_account

    def before_the_other_rotation(self: Any, account_id: str, *, consistent: bool = False) -> Any:
        account = read(self, account_id, consistent=consistent)
        if account is None or not consistent:
            return account
        other = secrets.token_hex(16)
        replaced = SealedSecret(scheme="plain", sealed=other, prefix=other[:8])
        return account.model_copy(update={"webhook_token": replaced, "webhook_secret": replaced})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DynamoStore, "get_account", before_the_other_rotation)
        yield


@contextmanager
def little_time_left() -> Iterator[None]:
    """An invocation with a second left of its Lambda timeout (a slow DynamoDB, a cold start)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeContext, "get_remaining_time_in_millis", lambda self: 1_000)
        yield


@contextmanager
def cost_moved_meanwhile() -> Iterator[None]:
    """Another writer (a send's finisher, the undo of a refused retry, another cancel) moving a batch's cost each
    time a cancel has read it, to give back what the batch took for messages never stored."""
    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway.errors import Conflict

    def moved(self: Any, batch: Any, *args: Any, **kwargs: Any) -> int:
        raise Conflict(f"batch {batch.reference_id} changed meanwhile")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DynamoStore, "reprice_batch", moved)
        yield


def scheduled_part_stored(gateway: Gateway, account: dict[str, Any]) -> str:
    """A batch of two scheduled a day ahead whose send stored one message (killed part-way): its reference_id."""
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway as wiring
    from sms_gateway.domain.models import utc_now

    bearer = {"authorization": f"Bearer {account['token']}"}
    send_at = (utc_now() + timedelta(days=1)).isoformat()
    body = {**PLAUSIBLE, "from": FUNDED_SENDER, "to": [AIRTEL, GLO], "send_at": send_at}
    sent = gateway.request("POST", "/ng/v1/sendsms", headers=bearer, body=body)
    assert sent.status == 200, sent
    store = wiring().store
    reference_id = int(sent.json["reference_id"])
    last = store.list_messages(account["account_id"], reference_id, limit=2)[0][-1]
    store.client.delete_item(TableName=store.table_name, Key=_key_of(last.key))
    return str(reference_id)


def keeps_changing(account: dict[str, Any], group_id: str) -> None:
    """The group's members item a version ahead of its summary on every read, as while member changes keep
    overtaking the read."""
    from sms_gateway.adapters.dynamodb_groups import _members_key
    from sms_gateway.bootstrap import gateway as wiring
    from sms_gateway.domain.groups import group_number

    store = wiring().store
    number = group_number(group_id)
    assert number is not None
    store.client.update_item(
        TableName=store.table_name,
        Key=_members_key(account["account_id"], number),
        UpdateExpression="SET version = version + :ahead",
        ExpressionAttributeValues={":ahead": {"N": "1000"}},
    )


def drawn(
    gateway: Gateway,
    document: dict[str, Any],
    account: dict[str, Any],
    status: int,
    probes: list[tuple[Any, dict[str, Any]]],
) -> list[str]:
    """Each operation whose answers to the probes (a condition to ask under, and what to change in the request) and
    whose document disagree on `status`: one answers it where none is documented, or none answers a documented
    one."""
    wrong = []
    for method, path, operation in operations(document):
        answers = []
        for condition, change in probes:
            acting = acting_on(gateway, account)
            if change.get("scheduled_part_stored"):
                cancellable = scheduled_part_stored(gateway, account)
                acting["ids"] |= {"reference_id": cancellable, "order_id": cancellable}
            if change.get("group_keeps_changing"):
                keeps_changing(account, acting["ids"]["group_id"])
            key = {"idempotency-key": secrets.token_hex(8)} if change.get("key") else {}
            bodies = change.get("bodies") or [{**acting["body"], **changed} for changed in change.get("changes", [{}])]
            with condition() if condition is not None else ExitStack():
                for body in bodies:
                    answer = ask(gateway, method, path, account, acting["ids"], headers=key, body=body)
                    answers.append(answer.status)
        if (status in answers) != (str(status) in operation["responses"]):
            wrong.append(f"{method} {path}: answered {answers}, documents {sorted(operation['responses'])}")
    return wrong


def test_only_the_operations_that_can_conflict_document_409(gateway, document, funded):
    """A change conflicts with an Idempotency-Key used for another request, a record in a state it does not apply to
    (a batch sent already, a notification still being retried), or another change that keeps winning (a group's
    members changed meanwhile, a token rotated meanwhile): each is asked so, and answers 409 exactly where documented
    (the session-key family answers an order that can no longer be removed 404, as its seed does)."""
    probes: list[tuple[Any, dict[str, Any]]] = [
        (None, {"key": True, "changes": [{}, {"message": "another", "name": "Other"}]}),
        # A cancel's key is kept once it cancelled: a scheduled batch to cancel, then the key with another request.
        (None, {"key": True, "scheduled_part_stored": True, "changes": [{}, {"message": "another", "name": "Other"}]}),
        (transactions_never_decided, {}),
        (rotated_meanwhile, {"bodies": [{"rotate_token": True}]}),
    ]
    wrong = drawn(gateway, document, funded, 409, probes)
    assert not wrong, "\n".join(wrong)


def test_only_the_operations_that_can_be_undone_or_left_undecided_document_503(gateway, document, funded):
    """503 (nothing changed, retry after Retry-After): a send with too little time left to store and queue it,
    a change DynamoDB keeps cancelling for conflicts with other writes, a group read while its members keep
    changing, a cancel whose give-back other writes keep moving (the batch cancelled, the retry finishes it). Each
    operation is asked under each, and answers 503 exactly where documented."""
    probes: list[tuple[Any, dict[str, Any]]] = [
        (little_time_left, {}),
        (transactions_never_decided, {}),
        (None, {"group_keeps_changing": True}),
        (cost_moved_meanwhile, {"scheduled_part_stored": True}),
    ]
    wrong = drawn(gateway, document, funded, 503, probes)
    assert not wrong, "\n".join(wrong)


def test_a_read_documents_no_conflict(document):
    """A GET stores nothing, so it conflicts with nothing (409)."""
    wrong = [
        f"{method} {path}"
        for method, path, operation in operations(document)
        if method == "GET" and "409" in operation["responses"]
    ]
    assert not wrong, "\n".join(wrong)

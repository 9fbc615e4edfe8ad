"""DynamoDB sender ID and shortcode requests (a DynamoStore mixin): one partition holds them all,
pk=SENDER_REQUESTS, sk=ACC#<account_id>#<sender in normal form>, so an account's requests and every account's are
each one Query. Requests are rare (a handful per account, decided by an operator), so one partition is plenty."""

from __future__ import annotations

from typing import Any

from sms_gateway.domain.models import SenderRequest, SenderRequestStatus
from sms_gateway.domain.senders import registry_form
from sms_gateway.errors import Conflict, NotFound

_PARTITION = "SENDER_REQUESTS"


def _key(account_id: str, sender: str) -> dict[str, Any]:
    return {"pk": {"S": _PARTITION}, "sk": {"S": f"ACC#{account_id}#{registry_form(sender)}"}}


def _request(item: dict[str, Any]) -> SenderRequest:
    return SenderRequest(
        account_id=item["account_id"]["S"],
        sender=item["sender"]["S"],
        status=SenderRequestStatus(item["status"]["S"]),
        requested_at=item["requested_at"]["S"],
        decided_at=item.get("decided_at", {}).get("S"),
        reason=item.get("reason", {}).get("S"),
    )


class DynamoSenderRequestsMixin:
    """Implements ports.SenderRequestStore with DynamoStore's `client` and `table_name`."""

    client: Any
    table_name: str

    def add_sender_request(self, request: SenderRequest) -> None:
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={
                    **_key(request.account_id, request.sender),
                    "account_id": {"S": request.account_id},
                    "sender": {"S": request.sender},
                    "status": {"S": str(SenderRequestStatus.PENDING)},
                    "requested_at": {"S": request.requested_at},
                },
                # A rejected request may be made again, and an approved one whose sender the account no longer has
                # (request_sender refuses a sender the account has before this write); a pending one stays as it is.
                ConditionExpression="attribute_not_exists(pk) OR #status IN (:rejected, :approved)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":rejected": {"S": str(SenderRequestStatus.REJECTED)},
                    ":approved": {"S": str(SenderRequestStatus.APPROVED)},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            existing = self.sender_request(request.account_id, request.sender)
            state = existing.status if existing else "made"
            raise Conflict(f"sender {request.sender!r} was requested already and is {state}") from error

    def sender_request(self, account_id: str, sender: str) -> SenderRequest | None:
        item = self.client.get_item(TableName=self.table_name, Key=_key(account_id, sender), ConsistentRead=True).get(
            "Item"
        )
        return _request(item) if item else None

    def sender_requests(self, account_id: str | None = None) -> list[SenderRequest]:
        prefix = f"ACC#{account_id}#" if account_id is not None else "ACC#"
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": _PARTITION}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
        }
        found: list[SenderRequest] = []
        while True:
            page = self.client.query(**query)
            found.extend(_request(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(found, key=lambda request: request.requested_at)

    def decide_sender_request(
        self, account_id: str, sender: str, status: SenderRequestStatus, *, decided_at: str, reason: str | None
    ) -> SenderRequest:
        values: dict[str, Any] = {
            ":status": {"S": str(status)},
            ":decided": {"S": decided_at},
            ":pending": {"S": str(SenderRequestStatus.PENDING)},
        }
        update = "SET #status = :status, decided_at = :decided"
        if reason:
            update += ", reason = :reason"
            values[":reason"] = {"S": reason}
        try:
            answer = self.client.update_item(
                TableName=self.table_name,
                Key=_key(account_id, sender),
                UpdateExpression=update,
                ConditionExpression="attribute_exists(pk) AND #status = :pending",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            old = getattr(error, "response", {}).get("Item")
            if not old:
                raise NotFound(f"account {account_id} has no request for sender {sender!r}") from error
            raise Conflict(f"the request for sender {sender!r} is {old['status']['S']} already") from error
        return _request(answer["Attributes"])

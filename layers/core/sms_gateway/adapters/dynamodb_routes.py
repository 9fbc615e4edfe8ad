"""DynamoDB adapter, routing: the operator's route table in one versioned item (a DynamoStore mixin).

Item it adds (see docs/data-model.md):
  routes  pk=CONFIG  sk=ROUTES  -> routes (list of maps), version (+1 per edit; every edit is conditional on it)
"""

from __future__ import annotations

from typing import Any

from sms_gateway.domain.routing import Route, RouteConflict, Routes, RouteTable
from sms_gateway.errors import Conflict, InvalidRequest, NotFound

_ROUTES_KEY = {"pk": {"S": "CONFIG"}, "sk": {"S": "ROUTES"}}


def _changed(expected_version: int, version: int | None = None) -> Conflict:
    now = f", now {version}" if version is not None else ""
    return Conflict(
        f"the route table changed since it was read (version {expected_version}{now}): read it again and retry"
    )


class DynamoRouteStore:
    """Implements ports.RouteStore; mixed into DynamoStore, so `client`, `table_name` and `_codec` are its."""

    client: Any
    table_name: str
    _codec: Any

    def _stored_routes(self) -> Routes:
        # Consistent: an edit checks the version it read, and the dispatcher should see an edit at once.
        found = self.client.get_item(TableName=self.table_name, Key=_ROUTES_KEY, ConsistentRead=True).get("Item")
        if not found:
            return Routes()
        return Routes.model_validate(self._codec.load(found))

    def route_table(self, default_upstream: str) -> RouteTable:
        stored = self._stored_routes()
        return RouteTable(routes=stored.routes, version=stored.version, default_upstream=default_upstream)

    def put_route(self, route: Route, expected_version: int) -> int:
        """Adds the route, or replaces the one with its id; returns the table's new version."""
        current = self._stored_routes()
        if current.version != expected_version:
            raise _changed(expected_version, current.version)
        try:
            updated = current.with_route(route)
        except RouteConflict as error:
            raise Conflict(str(error)) from error
        except ValueError as error:
            raise InvalidRequest(str(error)) from error
        self._write(updated, expected_version, account_id=route.account_id)
        return expected_version + 1

    def remove_route(self, route_id: str, expected_version: int) -> int:
        """Removes the route of that id; returns the table's new version."""
        current = self._stored_routes()
        if current.version != expected_version:
            raise _changed(expected_version, current.version)
        try:
            updated = current.without_route(route_id)
        except LookupError as error:
            raise NotFound(str(error.args[0])) from error
        # An empty table stays as an item with its version, so a stale editor still meets a conflict.
        self._write(updated, expected_version, account_id=None)
        return expected_version + 1

    def _write(self, routes: Routes, expected_version: int, *, account_id: str | None) -> None:
        item = {
            "pk": "CONFIG",
            "sk": "ROUTES",
            "routes": [route.model_dump(exclude_none=True) for route in routes.routes],
            "version": expected_version + 1,
        }
        put: dict[str, Any] = {"TableName": self.table_name, "Item": self._codec.dump(item)}
        if expected_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :expected"
            put["ExpressionAttributeValues"] = {":expected": {"N": str(expected_version)}}
        if account_id is None:
            try:
                self.client.put_item(**put)
            except self.client.exceptions.ConditionalCheckFailedException as error:
                raise _changed(expected_version) from error
            return
        # A route for an account that does not exist (a typo) would never match: the account must exist when
        # the table is written, checked in the same transaction.
        account_exists = {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": {"pk": {"S": f"ACC#{account_id}"}, "sk": {"S": "ACCOUNT"}},
                "ConditionExpression": "attribute_exists(pk)",
            }
        }
        try:
            self.client.transact_write_items(TransactItems=[account_exists, {"Put": put}])
        except self.client.exceptions.TransactionCanceledException as error:
            reasons = error.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                raise NotFound(f"no account {account_id}") from error
            raise _changed(expected_version) from error

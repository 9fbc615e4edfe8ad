"""Routing: the operator's route table and the upstream (with its fallback) it picks for each message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from sms_gateway.domain.networks import NETWORKS

# Upstream names are the last part of a Parameter Store name and appear in callback URLs
# (/callbacks/<upstream>/dlr), so they are kept to lowercase slugs.
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ROUTE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# E.164 numbers have at most 15 digits.
MAX_PREFIX_DIGITS = 15
# The whole table is one DynamoDB item (at most 400 KB); a thousand routes of ~150 bytes stay far below it.
MAX_ROUTES = 1000


class RouteConflict(ValueError):
    """Another route already matches exactly the same messages: the table would be ambiguous."""


def upstream_name(value: str, field: str = "upstream") -> str:
    """`value` when it is an upstream name; ValueError saying what one is otherwise."""
    if not UPSTREAM_NAME.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is not an upstream name: lowercase letters, digits, '-' and '_', "
            "as configured in Parameter Store"
        )
    return value


class RouteChoice(BaseModel):
    """The upstreams to try for one message, in order; `route_id` is None when the default upstream was chosen."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    primary: str
    fallback: str | None = None
    route_id: str | None = None

    @property
    def upstreams(self) -> tuple[str, ...]:
        return (self.primary,) if self.fallback is None else (self.primary, self.fallback)


class Route(BaseModel):
    """Messages matching every match field given (account, network, number prefix) go to `upstream`, and to
    `fallback` when `upstream` is unavailable."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    route_id: str
    account_id: str | None = None
    network: str | None = None
    prefix: str | None = None
    upstream: str
    fallback: str | None = None

    @field_validator("route_id")
    @classmethod
    def _route_id(cls, value: str) -> str:
        if not ROUTE_ID.fullmatch(value):
            raise ValueError(f"route id {value!r} must be letters, digits, '.', '-' or '_' (at most 128)")
        return value

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, value: str | None) -> str | None:
        if value is not None and not ACCOUNT_ID.fullmatch(value):
            raise ValueError(f"account id {value!r} is not an account id")
        return value

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        slug = value.strip().lower()
        if slug not in NETWORKS:
            raise ValueError(f"network {value!r} is not a known network slug (mtn, airtel, glo, ...: docs/networks.md)")
        return slug

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        # "+234803" is how operators write a range; the '+' adds nothing to the match.
        digits = value.strip().removeprefix("+")
        if not digits.isascii() or not digits.isdigit() or len(digits) > MAX_PREFIX_DIGITS:
            raise ValueError(
                f"prefix {value!r} must be 1 to {MAX_PREFIX_DIGITS} digits of the international number "
                "(country code first, e.g. 234803)"
            )
        return digits

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        return upstream_name(value, "upstream")

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: str | None) -> str | None:
        return None if value is None else upstream_name(value, "fallback")

    @model_validator(mode="after")
    def _sensible(self) -> Self:
        if self.account_id is None and self.network is None and self.prefix is None:
            raise ValueError(
                "a route needs at least one of account, network or prefix: "
                "messages matching no route go to the default upstream (DEFAULT_UPSTREAM)"
            )
        if self.fallback == self.upstream:
            raise ValueError(f"the fallback must be another upstream than {self.upstream!r}")
        return self

    @property
    def match(self) -> tuple[str | None, str | None, str | None]:
        return (self.account_id, self.network, self.prefix)

    @property
    def specificity(self) -> tuple[bool, int, bool]:
        """Compared between routes that match the same message: the larger wins (see docs/routing.md)."""
        return (self.account_id is not None, len(self.prefix or ""), self.network is not None)

    def matches(self, account_id: str, telco: str | None, digits: str) -> bool:
        return (
            (self.account_id is None or self.account_id == account_id)
            and (self.network is None or self.network == telco)
            and (self.prefix is None or digits.startswith(self.prefix))
        )

    def describe_match(self) -> str:
        parts = [
            f"{name}={value}" for name, value in zip(("account", "network", "prefix"), self.match, strict=True) if value
        ]
        return ", ".join(parts)


def require_possible_prefix(prefix: str) -> None:
    """ValueError unless some number's international digits can start with `prefix`: it begins with a country calling
    code, or is the start of one. A national range (Nigeria's 0803), a 00 in front or a typo would make a route that
    never matches, its messages going to the default upstream without a word."""
    import phonenumbers

    codes = (str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    if any(prefix.startswith(code) or code.startswith(prefix) for code in codes):
        return
    written = "no 0 in front: " if prefix.startswith("0") else ""
    raise ValueError(
        f"prefix {prefix!r} can start no number: write the international digits, {written}country code first "
        "(e.g. 234803 for Nigeria's 0803)"
    )


def default_route_id(account_id: str | None, network: str | None, prefix: str | None) -> str:
    """The id a route gets when the operator names none: its match, so setting the same match again replaces it."""
    parts = [
        f"{name}-{value.strip().lower().removeprefix('+')}"
        for name, value in (("account", account_id), ("network", network), ("prefix", prefix))
        if value
    ]
    return ".".join(parts) or "route"


class Routes(BaseModel):
    """The operator's routes as stored: one record, `version` +1 per edit (0: never written)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    routes: tuple[Route, ...] = ()
    version: int = 0

    @model_validator(mode="after")
    def _unambiguous(self) -> Self:
        if len(self.routes) > MAX_ROUTES:
            raise ValueError(f"a route table holds at most {MAX_ROUTES} routes")
        ids: set[str] = set()
        matches: dict[tuple[str | None, str | None, str | None], str] = {}
        for route in self.routes:
            if route.route_id in ids:
                raise ValueError(f"route id {route.route_id!r} appears twice")
            ids.add(route.route_id)
            other = matches.setdefault(route.match, route.route_id)
            if other != route.route_id:
                # Two routes of equal match would tie for every message they match; refusing them keeps the
                # choice a function of the table alone, with no hidden order.
                raise ValueError(
                    f"routes {other!r} and {route.route_id!r} both match {route.describe_match()}: keep one"
                )
        return self

    def find(self, route_id: str) -> Route | None:
        return next((route for route in self.routes if route.route_id == route_id), None)

    def with_route(self, route: Route) -> Self:
        """The table with `route` added, or replacing the route of the same id (in its place). A prefix no number
        can start with is refused here, when a route is set, rather than by Route: a table stored with one still
        loads (its route matches nothing), so a dispatcher reading it never fails."""
        if route.prefix is not None:
            require_possible_prefix(route.prefix)
        same_match = next((r for r in self.routes if r.match == route.match and r.route_id != route.route_id), None)
        if same_match is not None:
            raise RouteConflict(
                f"route {same_match.route_id!r} already matches {route.describe_match()}: "
                "change that route (by its id) or remove it first"
            )
        if self.find(route.route_id) is None:
            updated = (*self.routes, route)
        else:
            updated = tuple(route if r.route_id == route.route_id else r for r in self.routes)
        return self.model_validate({**self.__dict__, "routes": updated})

    def without_route(self, route_id: str) -> Self:
        if self.find(route_id) is None:
            raise LookupError(f"no route {route_id!r}")
        return self.model_validate({**self.__dict__, "routes": tuple(r for r in self.routes if r.route_id != route_id)})

    def in_precedence_order(self) -> tuple[Route, ...]:
        """Most specific first: the order in which an operator reads which route a message takes."""
        return tuple(sorted(self.routes, key=_precedence))


def _precedence(route: Route) -> tuple[int, int, int, tuple[str, ...], str]:
    has_account, prefix_length, has_network = route.specificity
    return (-int(has_account), -prefix_length, -int(has_network), tuple(v or "" for v in route.match), route.route_id)


class RouteTable(Routes):
    """The routes plus the upstream for everything they do not match (the target's DEFAULT_UPSTREAM)."""

    default_upstream: str

    @field_validator("default_upstream")
    @classmethod
    def _default_upstream(cls, value: str) -> str:
        return upstream_name(value, "default upstream")

    def choose(self, account_id: str, telco: str | None, msisdn: str) -> RouteChoice:
        """The most specific route matching the message wins: an account's own route before a general one, then
        the longest number prefix, then a network; nothing matching means the default upstream, no fallback."""
        digits = msisdn.strip().removeprefix("+")
        # Matching routes never tie (Routes refuses two of the same match), so max() has one answer.
        best = max(
            (route for route in self.routes if route.matches(account_id, telco, digits)),
            key=lambda route: route.specificity,
            default=None,
        )
        if best is None:
            return RouteChoice(primary=self.default_upstream)
        return RouteChoice(primary=best.upstream, fallback=best.fallback, route_id=best.route_id)

    def upstreams_for_account(self, account_id: str) -> frozenset[str]:
        """Every upstream a message of the account can go out through, primary or fallback: its own routes', and
        the general routes' and the default upstream unless one of its own matches all its messages (no network,
        no prefix: then nothing more general is ever chosen for it)."""
        own = [route for route in self.routes if route.account_id == account_id]
        if any(route.network is None and route.prefix is None for route in own):
            return _named(own)
        return _named(own) | self._general_upstreams()

    def _general_upstreams(self) -> frozenset[str]:
        """The upstreams of the general routes and the default: those of every account without a catch-all route."""
        return _named(route for route in self.routes if route.account_id is None) | {self.default_upstream}

    def accounts_losing_upstreams(self, after: RouteTable) -> frozenset[str] | None:
        """The accounts whose routes may name an upstream in this table that they do not name in `after` (an edit
        of it): those of the account routes it changes; None when it may be any account, because a general route
        or the default upstream named one that `after` names nowhere outside the account routes."""
        if not self._general_upstreams() <= after._general_upstreams():
            return None
        changed = set(self.routes) ^ set(after.routes)
        return frozenset(route.account_id for route in changed if route.account_id is not None)


def _named(routes: Iterable[Route]) -> frozenset[str]:
    """Every upstream the routes name, primary or fallback."""
    return frozenset(name for route in routes for name in (route.upstream, route.fallback) if name is not None)

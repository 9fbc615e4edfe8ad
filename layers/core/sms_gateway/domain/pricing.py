"""Prices: credits per message part by route tier (N, L, LL) and network, as the operator sets them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ROUTE_TIERS = ("N", "L", "LL")
ANY_NETWORK = "*"
DEFAULT_PRICE_PER_PART = 1


class PriceTable(BaseModel):
    """`prices[tier][network]` credits per part; `*` is the tier's price for networks not listed."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    prices: dict[str, dict[str, int]] = Field(default_factory=dict)

    def per_part(self, tier: str, telco: str | None) -> int:
        by_network = self.prices.get(tier, {})
        if telco and telco in by_network:
            return by_network[telco]
        return by_network.get(ANY_NETWORK, DEFAULT_PRICE_PER_PART)

    def with_price(self, tier: str, network: str, credits: int) -> PriceTable:
        if tier not in ROUTE_TIERS:
            raise ValueError(f"route tier must be one of {', '.join(ROUTE_TIERS)}")
        if credits < 0:
            raise ValueError("a price cannot be negative")
        updated = {t: dict(n) for t, n in self.prices.items()}
        updated.setdefault(tier, {})[network] = credits
        return PriceTable(prices=updated)

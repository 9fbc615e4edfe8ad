"""Prices: credits per message part by route tier (N, L, LL) and network, as the operator sets them; a network's
price may be set for one country (`mtn@GH`), since a network slug names a carrier in many countries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ROUTE_TIERS = ("N", "L", "LL")
ANY_NETWORK = "*"
DEFAULT_PRICE_PER_PART = 1


def price_key(network: str, country: str | None = None) -> str:
    """The table's key for a network (or `*`), in one country (`mtn@NG`, `*@GH`) or in every one (`mtn`, `*`)."""
    return f"{network}@{country.upper()}" if country else network


class PriceTable(BaseModel):
    """`prices[tier][key]` credits per part, `key` from `price_key`; the most specific key that is set prices a
    part: the network in the recipient's country, any network there, the network anywhere, then `*`."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    prices: dict[str, dict[str, int]] = Field(default_factory=dict)

    def per_part(self, tier: str, telco: str | None, country: str | None = None) -> int:
        by_key = self.prices.get(tier, {})
        keys = (
            price_key(telco, country) if telco and country else None,
            price_key(ANY_NETWORK, country) if country else None,
            telco,
            ANY_NETWORK,
        )
        for key in keys:
            if key and key in by_key:
                return by_key[key]
        return DEFAULT_PRICE_PER_PART

    def with_price(self, tier: str, network: str, credits: int) -> PriceTable:
        if tier not in ROUTE_TIERS:
            raise ValueError(f"route tier must be one of {', '.join(ROUTE_TIERS)}")
        if credits < 0:
            raise ValueError("a price cannot be negative")
        updated = {t: dict(n) for t, n in self.prices.items()}
        updated.setdefault(tier, {})[network] = credits
        return PriceTable(prices=updated)

"""What a request costs, from the price table in `data/pricing.json` (with its source and date).

Cost is computed from the `usage` the service reports, never estimated: cached prompt tokens are billed
at the cached-input price and the Batch API at its discount, the two levers the lessons measure.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

from labkit.data import data_path

PER_TOKENS = 1_000_000
_SNAPSHOTS_KEPT = 1024  # model names resolved to a listed one (`PriceTable.price`); a bound, as names come from answers


@dataclasses.dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float
    cached_input: float
    output: float


@dataclasses.dataclass(frozen=True)
class PriceTable:
    models: dict[str, Price]
    source: str
    as_of: str
    batch_discount: float = 0.5
    _snapshots: dict[str, Price | None] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | None = None) -> PriceTable:
        with open(path or data_path("pricing.json"), encoding="utf-8") as f:
            raw: dict[str, Any] = json.load(f)
        models = {name: Price(**values) for name, values in raw["models"].items()}
        return cls(
            models=models, source=raw["source"], as_of=raw["as_of"], batch_discount=raw.get("batch_discount", 0.5)
        )

    def price(self, model: str) -> Price | None:
        """The price of `model`, or of the longest listed name it starts with (dated snapshots). The name a snapshot
        resolves to is remembered: a real service names its snapshot in every answer, and the metrics layer prices
        each one."""
        price = self.models.get(model)
        if price is not None:
            return price
        try:
            return self._snapshots[model]
        except KeyError:
            pass
        matches = [name for name in self.models if model.startswith(name)]
        price = self.models[max(matches, key=len)] if matches else None
        if len(self._snapshots) < _SNAPSHOTS_KEPT:
            self._snapshots[model] = price
        return price

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *, batch: bool = False
    ) -> float | None:
        """USD for one request, or None when the model is not in the table."""
        price = self.price(model)
        if price is None:
            return None
        uncached = max(prompt_tokens - cached_tokens, 0)
        usd = (
            uncached * price.input + cached_tokens * price.cached_input + completion_tokens * price.output
        ) / PER_TOKENS
        return usd * self.batch_discount if batch else usd


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    return PriceTable.load()


def cost(
    model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *, batch: bool = False
) -> float | None:
    """USD for one request at the lab's price table."""
    return default_prices().cost(model, prompt_tokens, completion_tokens, cached_tokens, batch=batch)

"""An admission budget shared by `n` endpoints behind a balancer, each with its own RPM/TPM limit.

`AdmissionLayer` keeps its buckets in step with the `x-ratelimit-remaining-*` headers, which describe *one*
endpoint's key; taken as the total they would cut the budget of `n` endpoints to one endpoint's. So a header is
read as `n` times what it says (the balancer spreads the load evenly) before the wrapped budget syncs to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from labkit.layers.admission import Budget


class SpreadBudget:
    """Wrap a budget for `n` endpoints: headers are scaled by `n` before the budget syncs to them."""

    def __init__(self, budget: Budget, n: int) -> None:
        self.budget = budget
        self.n = n

    async def try_acquire(self, tokens: int) -> float:
        return await self.budget.try_acquire(tokens)

    async def refund(self, tokens: int, requests: int = 0, ticket: int = 0) -> None:
        await self.budget.refund(tokens, requests, ticket)

    def ticket(self) -> int:
        return self.budget.ticket()

    def roomy(self, tokens: int) -> bool:
        roomy = getattr(self.budget, "roomy", None)
        return bool(roomy(tokens)) if roomy is not None else False

    def sync(self, headers: Mapping[str, str], ticket: int = 0) -> None:
        scaled = dict(headers)
        for name in ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"):
            value = headers.get(name)
            if value is not None:
                try:
                    scaled[name] = str(float(value) * self.n)
                except ValueError:
                    scaled.pop(name)
        self.budget.sync(scaled, ticket)


__all__ = ["SpreadBudget"]

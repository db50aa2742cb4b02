"""The per-stage breakdown of one request: where its time went, stage by stage, adding up to the total.

The metrics layer opens a `labkit.timing.StageLog` per request; these pieces close its stages:

- `StageMark(name)`: a layer that does nothing but mark `name` when a request reaches it. Put one right below a
  layer to time that layer: `[MetricsLayer, CacheLayer, StageMark("cache_lookup"), AdmissionLayer,
  StageMark("admission_wait"), ...]`. The cache and admission layers themselves need no change (and import
  nothing of this package).
- `traced_http_client()`: the SDK's httpx client with two hooks: it marks `client` when the SDK hands the request
  to httpx (everything since the previous mark: the SDK's own work, retries' back-off), and `connect` when the
  request headers start going out (waiting for a pooled connection or opening a new one: ~0 on a reused one).
  httpx's request `trace` extension (from httpcore) reports those events, in the caller's task and context.
- The metrics layer closes `first_token` (first content chunk) and `decode` (end of the stream), or `response`
  for a plain call.

So a streamed miss reads: cache_lookup → admission_wait → client → connect → first_token → decode. Missing
checkpoints merge their time into the next stage (a cache hit is all `decode` after `first_token`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from labkit.chain import Handler, Result
from labkit.request import ChatRequest
from labkit.timing import mark

__all__ = ["STAGE_ORDER", "StageMark", "stage_rows", "traced_http_client"]

#: The stages in the order a request passes them (for tables and stacked charts).
STAGE_ORDER = ("cache_lookup", "admission_wait", "client", "connect", "first_token", "decode", "response")


class StageMark:
    """A layer that closes stage `name` of the current request when the request reaches it."""

    def __init__(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("StageMark needs a non-empty stage name")
        self.name = name

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        mark(self.name)
        return await call_next(request)

    def __repr__(self) -> str:
        return f"StageMark({self.name!r})"


async def _trace(event: str, info: Mapping[str, Any]) -> None:
    if event.endswith("send_request_headers.started"):  # http11.* or http2.*
        mark("connect")


async def _on_request(request: Any) -> None:
    mark("client")
    request.extensions["trace"] = _trace


def traced_http_client(**kwargs: Any) -> Any:
    """The SDK's default async httpx client (its timeouts and limits) with the stage hooks; pass it to
    `OpenAITransport(endpoint, http_client=...)`. Extra keyword arguments go to the client."""
    from openai import DefaultAsyncHttpxClient

    hooks = dict(kwargs.pop("event_hooks", {}) or {})
    hooks["request"] = [*hooks.get("request", []), _on_request]
    return DefaultAsyncHttpxClient(event_hooks=hooks, **kwargs)


def stage_rows(stages: Mapping[str, float], order: Iterable[str] = STAGE_ORDER) -> list[tuple[str, float]]:
    """`(stage, seconds)` in the order a request passes them (unknown stages last, as recorded)."""
    known = [(s, stages[s]) for s in order if s in stages]
    return known + [(s, v) for s, v in stages.items() if s not in dict(known)]

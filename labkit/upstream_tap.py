"""The innermost layer of each endpoint in an assembled chain: it counts the attempts that went upstream.

A caller learns whether *its* request went upstream (a cache hit or a coalesced request did not) by passing a
list in `controls["upstream_log"]`: the tap appends the endpoint's name to it. It reads nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable

from labkit.chain import Handler, Result
from labkit.request import ChatRequest


class UpstreamTap:
    """Count attempts per endpoint and tell the caller where its request went."""

    def __init__(self, name: str, counter: Counter[str]) -> None:
        self.name = name
        self.counter = counter

    def __call__(self, request: ChatRequest, call_next: Handler) -> Awaitable[Result]:
        """Count, then hand over the next handler's awaitable: no coroutine of the tap's own (`labkit.chain.Layer`)."""
        self.counter[self.name] += 1
        log = request.controls.get("upstream_log")
        if isinstance(log, list):
            log.append(self.name)
        return call_next(request)


__all__ = ["UpstreamTap"]

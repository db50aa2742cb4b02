"""Service counters for /admin/stats: what the lessons read to show load, queueing and connection reuse."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

_LATE_KEPT = 10_000  # the last first-token lateness samples kept for /admin/stats


class Stats:
    """Counters of one instance. Connections are tracked through each request's protocol object (one per
    TCP connection), so `connections_opened` counts connections that carried at least one request."""

    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()
        self.requests = 0
        self.active_requests = 0
        self.peak_active_requests = 0
        self.disconnects = 0
        self.dropped = 0
        self.stream_errors = 0
        self.connections_opened = 0
        self._conns: set[Any] = set()
        self._prune_at = 64
        self._first_late: deque[float] = deque(maxlen=_LATE_KEPT)

    def reset(self) -> None:
        """Zero the counters (connections still open stay tracked as open)."""
        self._prune()
        self.by_status.clear()
        self.requests = 0
        self.peak_active_requests = self.active_requests
        self.disconnects = self.dropped = self.stream_errors = 0
        self.connections_opened = 0
        self._first_late.clear()

    def first_token_sent(self, late_s: float) -> None:
        """How long after its due time a stream's first token was handed to the socket (the service's own
        share of an added time to first token; the rest is the network and the client)."""
        self._first_late.append(late_s if late_s > 0 else 0.0)

    def first_token_late_ms(self) -> dict[str, float | int | None]:
        ordered = sorted(self._first_late)
        n = len(ordered)

        def at(q: float) -> float | None:
            return round(ordered[min(n - 1, int(q * n))] * 1000.0, 1) if n else None

        return {"count": n, "p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}

    def saw_connection(self, protocol: Any) -> None:
        """Note the connection a request arrived on (cheap: a set lookup per request)."""
        if protocol in self._conns:
            return
        self._conns.add(protocol)
        self.connections_opened += 1
        if len(self._conns) > self._prune_at:
            self._prune()
            self._prune_at = max(64, 2 * len(self._conns))

    def _prune(self) -> None:
        self._conns = {p for p in self._conns if getattr(p, "transport", None) is not None}

    def connections_open(self) -> int:
        self._prune()
        return len(self._conns)

    def started(self) -> None:
        self.requests += 1
        self.active_requests += 1
        if self.active_requests > self.peak_active_requests:
            self.peak_active_requests = self.active_requests

    def snapshot(self, engine: Any, prefix_cache_entries: int) -> dict[str, Any]:
        return {
            "requests_total": self.requests,
            "requests_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "active_requests": self.active_requests,
            "peak_active_requests": self.peak_active_requests,
            "active_sequences": engine.active,
            "peak_active_sequences": engine.peak_active,
            "queued": engine.queued,
            "max_sequences": engine.max_sequences,
            "disconnects": self.disconnects,
            "dropped_connections": self.dropped,
            "stream_errors": self.stream_errors,
            "tokens_generated": engine.tokens_generated,
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open(),
            "prefix_cache_entries": prefix_cache_entries,
            "first_token_late_ms": self.first_token_late_ms(),
        }

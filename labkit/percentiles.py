"""Percentiles of a few hundred or thousand samples, as numpy's default (linear interpolation between ranks).

One small pure-Python helper rather than numpy: the callers (the metrics layer per stream, the hedge per request,
the benchmark's load client) hold short lists, and importing numpy into the lean load client would cost more
than it saves."""

from __future__ import annotations

from collections.abc import Sequence


def sorted_percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of an already sorted, non-empty sequence."""
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`; None when there are none."""
    if not values:
        return None
    return sorted_percentile(sorted(values), q)


__all__ = ["percentile", "sorted_percentile"]

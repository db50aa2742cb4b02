"""Go-style durations (`1s`, `6m0s`, `12ms`), the format of OpenAI's `x-ratelimit-reset-*` headers.

A shared utility, not a layer: the admission layer and the lean transport both read these headers.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """A Go-style duration (`1s`, `6m0s`, `12ms`, `1h2m3.5s`) or plain seconds, in seconds; None if unreadable."""
    if text is None:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)

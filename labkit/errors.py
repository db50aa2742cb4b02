"""What went wrong, in the terms resilience layers decide on: retryable or not, when, and whose fault.

The retry layer, the circuit breaker, the balancer and the hedge all look at the same failures and must agree
on what they mean, yet layers never import each other. So the one classification lives here:

- `classify(error)` turns any exception of the chain (the SDK's `APIStatusError` family, connection errors and
  timeouts, labkit's `StreamError`s, an open circuit) into an `ErrorInfo`: its kind, status and `error.code`,
  whether a retry may help, the server's `retry-after` if it sent one, whether it happened after the first
  token (then a transparent retry would repeat text the reader already saw), and whether it says something about
  the *endpoint's* health (a 503 does, a 400 or a 429 rate limit does not).
- `parse_retry_after(headers)` reads `retry-after-ms`, then `retry-after` (seconds or an HTTP date), as the
  official SDK does.
- `CircuitOpenError`, `NoBackendAvailable` and `DeadlineExceeded` are raised by the breaker, the balancer and the
  retry layer; defining them here lets each layer recognise the others' failures without importing them.

The rules follow the API's and the official SDK's own retry rule: connection errors, timeouts, 408, 409, 429 and >=
500 are worth retrying, `x-should-retry` overrides the status, and two cases are never retried whatever the headers
say: permanent client errors (400, 401, 403, 404, 422: the same request fails the same way) and `insufficient_quota`
(a 429 that means "out of credit", not "slow down": retrying only burns the budget and delays the real error).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx
import openai

try:  # the SDK's own fork of httpx (openai >= 3); its transport errors are wrapped by the SDK, but not always
    import httpx2 as _httpx2

    TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, _httpx2.TransportError)
    _HEADER_TYPES: tuple[type, ...] = (httpx.Headers, _httpx2.Headers)  # case-insensitive look-ups already
except ImportError:  # pragma: no cover - older SDKs use httpx itself
    TRANSPORT_ERRORS = (httpx.TransportError,)
    _HEADER_TYPES = (httpx.Headers,)

__all__ = [
    "PERMANENT_STATUSES",
    "RETRYABLE_STATUSES",
    "TRANSPORT_ERRORS",
    "CircuitOpenError",
    "DeadlineExceeded",
    "ErrorInfo",
    "FirstTokenTimeout",
    "MidStreamError",
    "NoBackendAvailable",
    "StreamError",
    "StreamTimeout",
    "classify",
    "parse_retry_after",
]

# Stream failures: raised by the stream guard, read by every resilience layer.


class StreamError(Exception):
    """A stream that did not finish; `partial_text` is what the reader already received (maybe nothing)."""

    def __init__(self, message: str, *, partial_text: str = "", chunks: int = 0, elapsed_s: float | None = None):
        super().__init__(message)
        self.partial_text = partial_text
        self.chunks = chunks
        self.elapsed_s = elapsed_s

    @property
    def retryable(self) -> bool:
        """Safe to retry transparently only when nothing was shown yet (a retry would repeat the text)."""
        return not self.partial_text


class MidStreamError(StreamError):
    """The stream broke after it started: `kind` is `error_event`, `dropped` or `truncated`."""

    def __init__(
        self,
        kind: Literal["error_event", "dropped", "truncated"],
        detail: str,
        *,
        partial_text: str = "",
        chunks: int = 0,
        elapsed_s: float | None = None,
        body: Any = None,
    ):
        what = {
            "error_event": "the service sent an error event",
            "dropped": "the connection was dropped",
            "truncated": "the response ended without a finish_reason",
        }[kind]
        super().__init__(
            f"stream broke after {chunks} chunks ({len(partial_text)} characters kept in .partial_text): "
            f"{what}: {detail}",
            partial_text=partial_text,
            chunks=chunks,
            elapsed_s=elapsed_s,
        )
        self.kind = kind
        self.detail = detail
        self.body = body


class FirstTokenTimeout(StreamError, TimeoutError):
    """No text within the first-token timeout (the service is queueing, slow or hung)."""


class StreamTimeout(StreamError, TimeoutError):
    """The whole stream took longer than its total timeout; the text so far is kept."""


#: Statuses that fail the same way again: the request (or the key) is wrong, not the moment.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 422})
#: Statuses the SDK retries (besides every status >= 500).
RETRYABLE_STATUSES = frozenset({408, 409, 429})

Kind = Literal[
    "status",  # an HTTP error status before any answer
    "connection",  # refused, reset, DNS ... before any answer
    "timeout",  # the HTTP client or an outer timeout gave up before any answer
    "first_token_timeout",  # StreamGuard: no first token in time (a hang, a queue)
    "mid_stream",  # a stream broke (drop, error event, truncation, total timeout)
    "circuit_open",  # the endpoint's breaker refused the request without sending it
    "no_backend",  # no endpoint may take the request at all
    "deadline",  # the request's overall deadline passed
    "other",  # anything else (a bug, bad input): never retried
]


class CircuitOpenError(Exception):
    """The endpoint's circuit breaker is open: the request was not sent. Retry elsewhere, or after `retry_after_s`."""

    def __init__(self, endpoint: str, retry_after_s: float) -> None:
        super().__init__(f"circuit of {endpoint!r} is open (next probe in {retry_after_s:.2f} s); request not sent")
        self.endpoint = endpoint
        self.retry_after_s = retry_after_s


class NoBackendAvailable(Exception):
    """Every endpoint of a balancer is refusing requests (all circuits open); `retry_after_s` until the first probe."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TimeoutError):
    """The request's overall deadline passed (attempts and waits included); the last failure is `__cause__`."""


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """One failure, classified."""

    kind: Kind
    retryable: bool
    reason: str  # why (not) retryable, in a few words: it ends up in counters and in the notebook
    status: int | None = None
    code: str | None = None
    retry_after_s: float | None = None
    after_first_token: bool = False
    partial_text: str = ""
    counts_against_endpoint: bool = False  # evidence that this endpoint is unhealthy (for breakers, balancers)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not isinstance(headers, _HEADER_TYPES):  # plain dicts: look case-insensitively
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get(name)
    return value


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms`, else `retry-after` in seconds or as an HTTP date.

    Returns None when there is no usable header (absent, malformed, negative or infinite), as the SDK does.
    """
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = _header(headers, name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            continue
        return value if math.isfinite(value) and value >= 0 else None
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:  # pragma: no cover - older Pythons
        return None
    return max(0.0, parsed.timestamp() - (time.time() if now is None else now))


def _status_info(error: openai.APIStatusError) -> ErrorInfo:
    status = error.status_code
    headers = error.response.headers if error.response is not None else httpx.Headers()
    code = getattr(error, "code", None)
    retry_after = parse_retry_after(headers)
    should = (_header(headers, "x-should-retry") or "").strip().lower()
    base = {"status": status, "code": code, "retry_after_s": retry_after}
    unhealthy = status >= 500 or status == 408 or code == "insufficient_quota"
    if code == "insufficient_quota":
        return ErrorInfo("status", False, "insufficient_quota", counts_against_endpoint=True, **base)
    if should == "false":
        return ErrorInfo("status", False, "x-should-retry: false", counts_against_endpoint=unhealthy, **base)
    if should == "true":
        return ErrorInfo("status", True, "x-should-retry: true", counts_against_endpoint=unhealthy, **base)
    if status in PERMANENT_STATUSES:
        return ErrorInfo("status", False, f"permanent {status}", **base)
    if status in RETRYABLE_STATUSES or status >= 500:
        return ErrorInfo("status", True, f"retryable {status}", counts_against_endpoint=unhealthy, **base)
    return ErrorInfo("status", False, f"status {status}", **base)


def classify(error: BaseException) -> ErrorInfo:
    """Classify a failure of the chain (see the module docstring for the rules)."""
    if isinstance(error, CircuitOpenError):
        return ErrorInfo("circuit_open", True, "circuit open", retry_after_s=error.retry_after_s)
    if isinstance(error, NoBackendAvailable):
        return ErrorInfo("no_backend", True, "no backend available", retry_after_s=error.retry_after_s)
    if isinstance(error, DeadlineExceeded):
        return ErrorInfo("deadline", False, "deadline exceeded")
    if isinstance(error, StreamError):
        text = error.partial_text
        if isinstance(error, FirstTokenTimeout) or (not text and not isinstance(error, MidStreamError | StreamTimeout)):
            return ErrorInfo("first_token_timeout", True, "no first token in time", counts_against_endpoint=True)
        if text:  # the reader already has part of the answer: a transparent retry would repeat it
            return ErrorInfo(
                "mid_stream",
                False,
                "failed after the first token",
                after_first_token=True,
                partial_text=text,
                counts_against_endpoint=True,
            )
        return ErrorInfo("mid_stream", True, "stream broke before any text", counts_against_endpoint=True)
    if isinstance(error, openai.APIStatusError):
        return _status_info(error)
    if isinstance(error, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return ErrorInfo("timeout", True, "timeout", counts_against_endpoint=True)
    if isinstance(error, (openai.APIConnectionError, ConnectionError, *TRANSPORT_ERRORS)):
        return ErrorInfo("connection", True, "connection error", counts_against_endpoint=True)
    if isinstance(error, openai.APIError):  # an SSE error event or an unparsable response, no status
        return ErrorInfo("mid_stream", True, "error event before any text", counts_against_endpoint=True)
    return ErrorInfo("other", False, f"{type(error).__name__} is not retryable")


def describe(error: BaseException) -> dict[str, Any]:
    """A JSON-friendly view of `classify(error)` (the notebook tabulates it)."""
    info = classify(error)
    return {"error": type(error).__name__, **dataclasses.asdict(info)}

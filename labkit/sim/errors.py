"""OpenAI-shaped error bodies.

Clients (and the official SDK) branch on the status code and on `error.type` / `error.code`, so every
failure the simulator produces goes through here and looks exactly like the real API's
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import math

import orjson
from aiohttp import web


class APIError(Exception):
    """An error to answer with an OpenAI-shaped JSON body and a real status code."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body (also used as the payload of an in-stream SSE error event)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        """The HTTP response, with `retry-after` / `retry-after-ms` when the error is retryable later."""
        headers = dict(extra_headers or {})
        headers.update(self.headers)
        if self.retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_s * 1000)))
        return web.Response(
            status=self.status, body=orjson.dumps(self.body()), content_type="application/json", headers=headers
        )


def invalid_request(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> APIError:
    """400 (or another 4xx) `invalid_request_error`."""
    return APIError(status, message, "invalid_request_error", code=code, param=param)


def missing_key() -> APIError:
    return APIError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
        code="invalid_api_key",
    )


def bad_key(key: str) -> APIError:
    shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
    return APIError(401, f"Incorrect API key provided: {shown}.", "invalid_request_error", code="invalid_api_key")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
        param="model",
    )


def rate_limited(kind: str, limit: int, used: float, requested: float, retry_after_s: float, model: str) -> APIError:
    """429 `rate_limit_exceeded` of type `requests` or `tokens` (retryable, with retry-after)."""
    unit = "RPM" if kind == "requests" else "TPM"
    message = (
        f"Rate limit reached for {model} on {kind} per min ({unit}): Limit {limit}, Used {int(used)}, "
        f"Requested {int(requested)}. Please try again in {_human(retry_after_s)}."
    )
    return APIError(429, message, kind, code="rate_limit_exceeded", retry_after_s=retry_after_s)


def insufficient_quota() -> APIError:
    """429 `insufficient_quota`: waiting does not help, so no retry-after (like the real API, which sends none)."""
    return APIError(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        code="insufficient_quota",
    )


def server_error() -> APIError:
    return APIError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        code="server_error",
    )


def bad_gateway() -> APIError:
    return APIError(502, "Bad gateway.", "server_error", code="bad_gateway")


def overloaded() -> APIError:
    return APIError(503, "The server is overloaded or not ready yet.", "server_error", code="overloaded")


def service_unavailable() -> APIError:
    return APIError(
        503,
        "The service is temporarily unable to accept requests (queue full).",
        "server_error",
        code="service_unavailable",
    )


def _human(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.3g}s"

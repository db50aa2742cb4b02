"""A lean transport: the OpenAI chat-completions wire protocol spoken directly on aiohttp.

Why: the official SDK spends client CPU per request on top of the HTTP client under it (request options,
headers, retries machinery, response wrappers, and a pure-Python model construction), and with many
concurrent streams on a small machine that CPU adds to the time to first token. How much, on a given
machine, is measured, not assumed: `python -m labkit.lessons.pooling` and the pooling lesson (part 5).
This transport has the same interface as `OpenAITransport` (`await transport(request)` returns a
`ChatCompletion` or a `ChunkStream` of `ChatCompletionChunk`) and keeps what callers rely on:

- the same request: `ChatRequest.body()` as JSON, `Authorization: Bearer`, per-request `timeout` and
  `headers` controls;
- the same types: responses become the SDK's pydantic models. They are *validated* with pydantic-core
  (`model_validate`), which runs in Rust, instead of the SDK's own lenient, pure-Python `construct` (how much
  cheaper it is on a given machine: `parse_cost` in `python -m labkit.lessons.pooling`'s JSON, or part 5 of the
  pooling lesson); a body that does not validate falls back to `construct`, so it never fails where the SDK
  would not. `_request_id` is set from `x-request-id` as the SDK does;
- server-sent events parsed as the SSE standard says (fields, comments, CR/LF/CRLF line ends, multi-line
  data), ending at `data: [DONE]`;
- the same errors: an HTTP error becomes the SDK's class for its status (`BadRequestError`,
  `AuthenticationError`, `NotFoundError`, `RateLimitError`, `InternalServerError` ...), made as the SDK
  makes it (message `Error code: N - message`, the `httpx2.Response` with status, headers and body, and
  `body` = the `error` object); an error event inside a stream raises `openai.APIError` with its body;
  timeouts raise `APITimeoutError` and connection failures `APIConnectionError` (mid-stream too, where the
  SDK lets the HTTP client's own exception through);
- rate-limit headers parsed into `RateLimitInfo` (durations like `6m0s` in seconds): on a stream in
  `stream.info["ratelimit"]`, on a completion as `completion._ratelimit`, and on the transport as
  `last_ratelimit`; the raw headers where `OpenAITransport` puts them (`info["headers"]`, `_headers`).

What it leaves out, on purpose: retries (labkit's retry layer decides), other endpoints than chat
completions, and the SDK's request-side type checking. Use the SDK where those matter, or where its CPU does
not bind: the pooling lesson (part 5) and `python -m labkit.lessons.pooling` measure from how many concurrent
streams it does on a given machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.body import keep_body, lenient_model
from labkit.durations import parse_duration
from labkit.endpoint import Endpoint
from labkit.request import ChatRequest
from labkit.stream import ChunkStream
from labkit.transports.pool import ClientPool, PoolConfig

__all__ = ["LeanTransport", "RateLimitInfo", "parse_duration", "sse_data", "status_error"]

USER_AGENT = "labkit-lean/1"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class RateLimitInfo:
    """The rate-limit headers of one response, parsed; None where a header was missing or unreadable."""

    limit_requests: int | None
    remaining_requests: int | None
    reset_requests_s: float | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens_s: float | None
    request_id: str | None = None
    processing_ms: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        get = headers.get
        return cls(
            limit_requests=_int(get("x-ratelimit-limit-requests")),
            remaining_requests=_int(get("x-ratelimit-remaining-requests")),
            reset_requests_s=parse_duration(get("x-ratelimit-reset-requests")),
            limit_tokens=_int(get("x-ratelimit-limit-tokens")),
            remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
            reset_tokens_s=parse_duration(get("x-ratelimit-reset-tokens")),
            request_id=get("x-request-id"),
            processing_ms=_int(get("openai-processing-ms")),
        )


def status_error(status: int, headers: Mapping[str, str], content: bytes, url: str) -> openai.APIStatusError:
    """The SDK's exception for an HTTP error answer, made the way the SDK makes it."""
    request = httpx2.Request("POST", url)
    response = httpx2.Response(status, headers=list(headers.items()), content=content, request=request)
    err_msg = f"Error code: {status}"
    body: object = content.decode("utf-8", "replace").strip()
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str) and message:
            err_msg += f" - {message}"
    data = body.get("error", body) if isinstance(body, dict) else body
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = openai.InternalServerError if status >= 500 else openai.APIStatusError
    return cls(err_msg, response=response, body=data)


_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


class LeanTransport:
    """`await LeanTransport(endpoint)(request)` -> `ChatCompletion | ChunkStream`, on a pooled aiohttp session."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        pool: ClientPool | None = None,
        timeout: float | None = None,
        validate: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self._own_pool = pool is None
        self.pool = pool if pool is not None else ClientPool(PoolConfig())
        self.timeout = timeout if timeout is not None else self.pool.config.timeout
        self.validate = validate
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {endpoint.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.last_ratelimit: RateLimitInfo | None = None

    def _parse(self, cls: type[Any], data: Any) -> Any:
        # never fail where the SDK would not: what does not validate is built without validation
        return lenient_model(cls, data) if self.validate else cls.construct(**data)

    async def __call__(self, request: ChatRequest) -> ChatCompletion | ChunkStream:
        session = self.pool.session(self.endpoint)
        headers = self._headers
        if "headers" in request.controls:
            headers = {**headers, **dict(request.controls["headers"])}
        if request.stream:
            headers = {**headers, "Accept": "text/event-stream"}
        total = request.controls.get("timeout", self.timeout)
        timeout = aiohttp.ClientTimeout(total=None if request.stream else total, sock_connect=total, sock_read=total)
        try:
            resp = await session.post(self.url, data=orjson.dumps(request.body()), headers=headers, timeout=timeout)
        except TimeoutError as error:
            raise openai.APITimeoutError(request=httpx2.Request("POST", self.url)) from error
        except aiohttp.ClientError as error:
            raise openai.APIConnectionError(request=httpx2.Request("POST", self.url)) from error
        try:
            headers_in = resp.headers
            ratelimit = RateLimitInfo.from_headers(headers_in)
            self.last_ratelimit = ratelimit
            if resp.status >= 400:
                content = await resp.read()
                raise status_error(resp.status, resp.headers, content, self.url)
            if request.stream:
                stream = ChunkStream(
                    self._events(resp),
                    close=_closer(resp),
                    info={
                        "source": "upstream",
                        "headers": resp.headers,
                        "ratelimit": ratelimit,
                        "request_id": ratelimit.request_id,
                    },
                )
                resp = None  # the stream owns the response now
                return stream
            body = await resp.read()
            data = orjson.loads(body)
        except TimeoutError as error:
            raise openai.APITimeoutError(request=httpx2.Request("POST", self.url)) from error
        except aiohttp.ClientError as error:
            raise openai.APIConnectionError(request=httpx2.Request("POST", self.url)) from error
        finally:
            if resp is not None:
                resp.release()
        completion: ChatCompletion = self._parse(ChatCompletion, data)
        completion._request_id = ratelimit.request_id
        completion._ratelimit = ratelimit  # type: ignore[attr-defined]
        completion._headers = headers_in  # type: ignore[attr-defined]  # as OpenAITransport sets it
        keep_body(completion, body)  # a cache stores it as it came (labkit.body)
        return completion

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async for data in sse_data(resp.content):
                if data.startswith("[DONE]"):
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and event.get("error"):
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    if not message or not isinstance(message, str):
                        message = "An error occurred during streaming"
                    raise openai.APIError(message, httpx2.Request("POST", self.url), body=error)
                yield self._parse(ChatCompletionChunk, event)
        except TimeoutError as error:
            raise openai.APITimeoutError(request=httpx2.Request("POST", self.url)) from error
        except aiohttp.ClientError as error:
            raise openai.APIConnectionError(request=httpx2.Request("POST", self.url)) from error

    async def aclose(self) -> None:
        """Close the pooled session if this transport made its own pool (a shared pool is closed by its owner)."""
        if self._own_pool:
            await self.pool.aclose()

    async def __aenter__(self) -> LeanTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _closer(resp: aiohttp.ClientResponse) -> Any:
    async def close() -> None:
        # A finished response returns its connection to the pool; an unfinished one must not (the rest of
        # the stream would still arrive on it), so it is closed, as every HTTP/1.1 client does.
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()

    return close


async def sse_data(reader: Any) -> AsyncIterator[str]:
    """The `data` of each server-sent event read from `reader.readany()` (an aiohttp response's `content`).

    WHATWG SSE: `field: value` lines, comments (`:`), LF, CR or CRLF line ends (a CRLF may be split across
    reads), several `data` lines joined by LF, events without data skipped. The common case, one `data:` line
    per event, takes a fast path.
    """
    buffer = b""
    while True:
        chunk = await reader.readany()
        if not chunk:
            break
        buffer += chunk
        if b"\r" in buffer:
            carry = buffer.endswith(b"\r")  # a CR at the end may be half of a CRLF
            body = buffer[:-1] if carry else buffer
            buffer = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if carry else b"")
        *events, buffer = buffer.split(b"\n\n")
        for block in events:
            if block.startswith(b"data: ") and b"\n" not in block:  # the common case: one data line
                yield block[6:].decode()
                continue
            data = _event_data(block)
            if data is not None:
                yield data
    if buffer.strip():
        data = _event_data(buffer.rstrip(b"\r\n"))
        if data is not None:
            yield data


def _event_data(block: bytes) -> str | None:
    lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines).decode() if lines else None

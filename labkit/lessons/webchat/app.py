"""The chat web app: `POST /api/chat` streams the layer chain's answer as chunked plain text.

Why ASGI (Starlette): the app is a plain ASGI application, so any ASGI server runs it (uvicorn serves it here,
in its own process: `python -m labkit.lessons.webchat`), and an engineer who already has a FastAPI or Starlette
application mounts it as it is (`app.mount("/chat", chat_app)`, with `chat_app.router.lifespan_context(chat_app)`
entered in the host's own lifespan, which closes the upstream client). The answer is a Starlette
`StreamingResponse` over an async generator: one chunk per text delta, written as it comes, nothing buffered.
A client that goes away cancels that generator at once (Starlette listens for `http.disconnect` while it
streams; before the first token the handler watches for it itself), and the generator's end closes the
upstream stream, so the model service stops generating. A prototype measured aiohttp.web (what the simulated
service runs on) with about half of Starlette+uvicorn's added TTFT at 1000 concurrent streams; a chat page
serves a handful of streams, far below that load.

The wire format, and why not SSE: the browser reads the body with `fetch` + `response.body.getReader()`
(an `EventSource` can only GET, so it cannot send the message in a POST body). Each read may hold a few
tokens, or half of a multi-byte character, so the page decodes with `TextDecoder(..., {stream: true})`.
Errors before the first token get a real HTTP status and a JSON body `{"error": {"message": ...}}`; an error
after text was sent cannot change the status any more, so it is sent in-band: the byte `\\x1e` (ASCII record
separator, which never occurs in the answer) followed by that same JSON, and then the body ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import uvicorn
from openai.types.chat import ChatCompletionChunk
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labkit.assemble import ChainConfig, build_chain
from labkit.chain import Chain
from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.errors import FirstTokenTimeout, StreamError
from labkit.layers.metrics import MetricsLayer, MetricsRecorder
from labkit.stream import ChunkStream, chunk_text
from labkit.streaming import trim_history

log = logging.getLogger("labkit.lessons.webchat")

STATIC = Path(__file__).resolve().parent / "static"
ERROR_MARK = "\x1e"
MAX_BODY_BYTES = 64 * 1024
# A body over the limit is still read (and dropped) up to this size, so the client finishes sending and reads
# the 413 instead of failing on a reset connection; past it the connection is closed after the 413.
DRAIN_BODY_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 4000
MAX_HISTORY = 40
HISTORY_BUDGET_TOKENS = 3000

#: The app's chain: metrics over the stream guard over one pooled SDK client (the timeouts come from `create_app`).
CHAT_CHAIN = ChainConfig.preset("bare", metrics=True, streaming=True, total_timeout_s=60.0)

STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Content-Type-Options": "nosniff",  # no buffering for MIME sniffing
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the body
}


class BadRequest(Exception):
    """A request the app answers with a 4xx and a message the page shows as it is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, **extra}}, status_code=status, headers=headers)


def parse_chat(raw: bytes, settings: Mapping[str, Any]) -> tuple[list[dict[str, str]], int]:
    """The messages and max_tokens of a `POST /api/chat` body, or `BadRequest` saying what is wrong."""
    if not raw.strip():
        raise BadRequest(400, 'The request body is empty: send JSON like {"message": "Hello"}.')
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(400, f"The request body is not valid JSON ({error}).") from None
    if not isinstance(body, dict):
        raise BadRequest(400, 'The request body must be a JSON object with a "message" field.')
    message = body.get("message")
    if not isinstance(message, str):
        raise BadRequest(400, 'The "message" field is missing or is not a string.')
    if not message.strip():
        raise BadRequest(400, "The message is empty: type something first.")
    limit = int(settings["max_message_chars"])
    if len(message) > limit:
        raise BadRequest(413, f"The message is too long: {len(message)} characters (the limit is {limit}).")
    max_tokens = body.get("max_tokens", settings["max_tokens"])
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
        raise BadRequest(400, '"max_tokens" must be a whole number from 1 to 4096.')
    history = body.get("history", [])
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        raise BadRequest(400, f'"history" must be a list of at most {MAX_HISTORY} messages.')
    turns: list[dict[str, str]] = []
    for item in history:
        if (
            not isinstance(item, dict)
            or item.get("role") not in ("user", "assistant")
            or not isinstance(item.get("content"), str)
        ):
            raise BadRequest(400, 'Each history entry must be {"role": "user"|"assistant", "content": text}.')
        turns.append({"role": item["role"], "content": item["content"][:limit]})
    messages: list[dict[str, str]] = [{"role": "system", "content": settings["system_prompt"]}, *turns]
    messages.append({"role": "user", "content": message})
    trimmed = trim_history(messages, int(settings["history_budget_tokens"]), settings["model"])
    return [dict(m) for m in trimmed], max_tokens


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or `BadRequest(413)` once it passes `limit` bytes (declared or actually sent)."""
    too_large = BadRequest(413, f"The request is too large (the limit is {limit // 1024} KiB).")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_BODY_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > DRAIN_BODY_BYTES:
            raise too_large
        if size <= limit:
            parts.append(part)
    if size > limit:
        raise too_large
    return b"".join(parts)


def _upstream_message(error: BaseException) -> tuple[int, str]:
    """The status and message the page shows when the model service failed before the first token."""
    if isinstance(error, FirstTokenTimeout):
        return 504, f"The model service did not start answering in time ({error})."
    if isinstance(error, openai.APIStatusError):
        body = error.body
        detail = body.get("message") if isinstance(body, dict) and body.get("message") else error.message
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"].get("message") or detail
        return 502, f"The model service answered {error.status_code}: {detail}"
    if isinstance(error, openai.APIConnectionError):
        return 502, f"The model service could not be reached ({error})."
    if isinstance(error, StreamError):
        return 502, f"The model service failed before answering: {error}"
    return 500, f"Unexpected error: {type(error).__name__}: {error}"


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Cancel the body of the `async with` if the client disconnects, and raise `ClientDisconnect` then.

    Until the response starts nobody else listens for `http.disconnect` (Starlette does while it streams), so
    a client that leaves while the service prepares its first token would go unnoticed; a watcher task cancels
    the wait instead (as aiohttp's handler cancellation did), and the caller closes the upstream stream.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientDisconnect() from None
        raise
    finally:
        watcher.cancel()


async def _first_text(stream: ChunkStream) -> tuple[str, bool]:
    """The first text delta, and whether the stream ended without one."""
    try:
        first = ""
        while not first:
            first = chunk_text(await stream.__anext__())
        return first, False
    except StopAsyncIteration:
        return "", True


async def _relay(first: str, rest: AsyncIterator[ChatCompletionChunk] | None) -> AsyncIterator[bytes]:
    """Every text delta as it comes; an error after text was sent goes in-band after `\\x1e`.

    A client that goes away cancels this generator where it waits (CancelledError is not an `Exception`,
    so it is not reported in-band); `ChatStreamResponse` then closes the upstream stream.
    """
    if first:
        yield first.encode()
    if rest is None:
        return
    try:
        async for chunk in rest:
            text = chunk_text(chunk)
            if text:
                yield text.encode()
    except Exception as error:
        payload = {"error": {"message": f"The answer broke off: {error}", "type": type(error).__name__}}
        yield (ERROR_MARK + json.dumps(payload)).encode()


class ChatStreamResponse(StreamingResponse):
    """A `StreamingResponse` of the answer's text that closes the upstream stream however the response ends:
    the answer finished, an error was sent in-band, or the client went away and the generator was cancelled."""

    media_type = "text/plain"  # Starlette adds "; charset=utf-8"

    def __init__(self, stream: ChunkStream, first: str, ended: bool) -> None:
        super().__init__(_relay(first, None if ended else stream), headers=STREAM_HEADERS)
        self.upstream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.upstream:
            await super().__call__(scope, receive, send)


async def chat(request: Request) -> Response:
    settings = request.app.state.settings
    try:
        messages, max_tokens = parse_chat(await read_body(request), settings)
    except BadRequest as bad:
        return error_response(bad.status, bad.message)

    chain: Chain = request.app.state.chain
    stream: ChunkStream | None = None
    # Hold the headers until the first text (or an early failure), so errors before any text get a status.
    try:
        async with _cancel_on_disconnect(request.receive):
            stream = await chain.stream(messages, model=settings["model"], max_tokens=max_tokens)
            first, ended = await _first_text(stream)
    except BaseException as error:
        if stream is not None:
            await stream.aclose()
        if not isinstance(error, Exception) or isinstance(error, ClientDisconnect):
            raise
        status, message = _upstream_message(error)
        return error_response(status, message)
    assert stream is not None
    return ChatStreamResponse(stream, first, ended)


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def stats(request: Request) -> Response:
    recorder: MetricsRecorder = request.app.state.recorder
    recent = [r.as_dict() for r in list(recorder.records)[-20:]]
    return JSONResponse({"summary": recorder.summary(), "recent": recent})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, "model": request.app.state.settings["model"]})


async def _http_error(request: Request, error: Exception) -> Response:
    """404, 405 ...: a JSON message under /api/, Starlette's plain text elsewhere."""
    assert isinstance(error, HTTPException)
    route_path = request.url.path.removeprefix(request.scope.get("root_path", ""))  # the path below a mount
    if route_path.startswith("/api/"):
        return error_response(error.status_code, error.detail, headers=error.headers)
    return PlainTextResponse(error.detail, status_code=error.status_code, headers=error.headers)


class JSONErrors:
    """ASGI middleware: every failure is a JSON message (500) and the server keeps serving.

    A client that went away is logged, not answered. A failure after the response started cannot get a status
    any more: it is logged and re-raised, so the server ends the connection instead of a truncated 200.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except ClientDisconnect:
            log.info("client went away: %s %s", scope["method"], scope["path"])
        except Exception as error:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            response = error_response(500, f"Unexpected error: {type(error).__name__}: {error}")
            await response(scope, receive, send)


def create_app(
    upstream: str,
    *,
    api_key: str = LOCAL_API_KEY,
    model: str = "gpt-4o",
    max_tokens: int = 400,
    max_message_chars: int = MAX_MESSAGE_CHARS,
    history_budget_tokens: int = HISTORY_BUDGET_TOKENS,
    first_token_timeout_s: float | None = 30.0,
    total_timeout_s: float | None = 300.0,
    system_prompt: str = "You are a helpful assistant. Answer clearly and briefly.",
    config: ChainConfig = CHAT_CHAIN,
) -> Starlette:
    """The ASGI app over the chain `config` describes (default `CHAT_CHAIN`) to `upstream`.

    The metrics layer is always on (`/api/stats` reads it) and the stream guard gets the two timeouts; any other
    layer is a switch of `config` (`CHAT_CHAIN.replace(cache=True)`).
    """
    recorder = MetricsRecorder(maxlen=10_000)
    config = config.replace(
        metrics=True, streaming=True, first_token_timeout_s=first_token_timeout_s, stream_timeout_s=total_timeout_s
    )
    assembled = build_chain(config, Endpoint(upstream.rstrip("/"), api_key), given={"metrics": MetricsLayer(recorder)})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await assembled.aclose()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/stats", stats, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(JSONErrors)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.chain = assembled.chain
    app.state.recorder = recorder
    app.state.settings = {
        "model": model,
        "max_tokens": max_tokens,
        "max_message_chars": max_message_chars,
        "history_budget_tokens": history_budget_tokens,
        "system_prompt": system_prompt,
    }
    return app


class UvicornServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: `labkit.lifecycle` owns SIGTERM/SIGINT here, as in
    the simulated service, and stops the server with `stop()`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def start(self) -> int:
        """Serve in a task on the current loop; the port once it listens."""
        self.task = asyncio.create_task(self.serve())
        while not self.started:
            if self.task.done():  # startup failed: raise its error
                self.task.result()
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
        return int(self.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, give open responses a second to finish, cancel the rest, run the app's shutdown."""
        self.should_exit = True
        if self.task is not None:
            await self.task


async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> tuple[UvicornServer, int]:
    """Run `app` under uvicorn on the current loop; returns the server (`await server.stop()`) and its port."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",  # the pure-Python HTTP/1.1 parser uvicorn always has (httptools is an optional extra)
        ws="none",
        lifespan="on",
        backlog=1024,
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    server = UvicornServer(config)
    return server, await server.start()


__all__ = ["CHAT_CHAIN", "ERROR_MARK", "ChatStreamResponse", "create_app", "parse_chat", "serve"]

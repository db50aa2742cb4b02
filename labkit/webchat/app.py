"""The chat web app: `POST /api/chat` streams the layer chain's answer as chunked plain text.

Why aiohttp.web: it is already a dependency (the simulated service runs on it), it streams a response with
`StreamResponse.write()` one chunk per token without a framework in between, and with
`handler_cancellation=True` a client that goes away cancels the handler at once, which closes the upstream
stream (the model service stops generating). DESIGN §4 also measured it with half of Starlette+uvicorn's
added TTFT under load.

The wire format, and why not SSE: the browser reads the body with `fetch` + `response.body.getReader()`
(an `EventSource` can only GET, so it cannot send the message in a POST body). Each read may hold a few
tokens, or half of a multi-byte character, so the page decodes with `TextDecoder(..., {stream: true})`.
Errors before the first token get a real HTTP status and a JSON body `{"error": {"message": ...}}`; an error
after text was sent cannot change the status any more, so it is sent in-band: the byte `\\x1e` (ASCII record
separator, which never occurs in the answer) followed by that same JSON, and then the body ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
from aiohttp import web
from openai.types.chat import ChatCompletionChunk

from labkit.chain import Chain
from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.metrics import MetricsLayer, MetricsRecorder
from labkit.streaming import FirstTokenTimeout, StreamError, StreamGuard, trim_history
from labkit.transport import OpenAITransport

log = logging.getLogger("labkit.webchat")

STATIC = Path(__file__).resolve().parent / "static"
ERROR_MARK = "\x1e"
MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4000
MAX_HISTORY = 40
HISTORY_BUDGET_TOKENS = 3000

CHAIN_KEY: web.AppKey[Chain] = web.AppKey("chain", Chain)
RECORDER_KEY: web.AppKey[MetricsRecorder] = web.AppKey("recorder", MetricsRecorder)
SETTINGS_KEY: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)


class BadRequest(Exception):
    """A request the app answers with a 4xx and a message the page shows as it is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"message": message, **extra}}, status=status)


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


def _text(chunk: ChatCompletionChunk) -> str:
    for choice in chunk.choices:
        if choice.delta.content:
            return choice.delta.content
    return ""


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


async def chat(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"The request is too large (the limit is {MAX_BODY_BYTES // 1024} KiB).")
    try:
        messages, max_tokens = parse_chat(raw, settings)
    except BadRequest as bad:
        return error_response(bad.status, bad.message)

    chain = request.app[CHAIN_KEY]
    try:
        stream = await chain.stream(messages, model=settings["model"], max_tokens=max_tokens)
    except Exception as error:
        status, message = _upstream_message(error)
        return error_response(status, message)

    async with stream:
        # Hold the headers until the first text (or an early failure), so errors before any text get a status.
        iterator = stream.__aiter__()
        first = ""
        ended = False
        try:
            while not first:
                first = _text(await iterator.__anext__())
        except StopAsyncIteration:
            ended = True
        except Exception as error:
            status, message = _upstream_message(error)
            return error_response(status, message)

        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-cache, no-transform",
                "X-Content-Type-Options": "nosniff",  # no buffering for MIME sniffing
                "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the body
            },
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        if first:
            await response.write(first.encode())
        if not ended:
            await _relay(iterator, response)
        await response.write_eof()
        return response


async def _relay(chunks: AsyncIterator[ChatCompletionChunk], response: web.StreamResponse) -> None:
    """Write every text delta as it comes; an error after text was sent goes in-band after `\\x1e`."""
    try:
        async for chunk in chunks:
            text = _text(chunk)
            if text:
                await response.write(text.encode())
    except ConnectionError:  # the client went away: `async with stream` closes upstream
        raise
    except Exception as error:
        payload = {"error": {"message": f"The answer broke off: {error}", "type": type(error).__name__}}
        await response.write((ERROR_MARK + json.dumps(payload)).encode())


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def stats(request: web.Request) -> web.StreamResponse:
    recorder = request.app[RECORDER_KEY]
    recent = [r.as_dict() for r in list(recorder.records)[-20:]]
    return web.json_response({"summary": recorder.summary(), "recent": recent})


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True, "model": request.app[SETTINGS_KEY]["model"]})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure of an /api route is a JSON message; the server keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException as http:
        if not request.path.startswith("/api/"):
            raise
        return error_response(http.status, http.reason or "error")
    except ConnectionError as gone:  # the client disconnected mid-answer
        log.info("client went away: %s", gone)
        raise
    except Exception as error:
        log.exception("unhandled error")
        return error_response(500, f"Unexpected error: {type(error).__name__}: {error}")


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
    layers: Sequence[Any] = (),
) -> web.Application:
    """The app over a chain `metrics -> [layers] -> StreamGuard -> OpenAI transport` to `upstream`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
    recorder = MetricsRecorder(maxlen=10_000)
    transport = OpenAITransport(Endpoint(upstream.rstrip("/"), api_key))
    guard = StreamGuard(first_token_timeout_s=first_token_timeout_s, total_timeout_s=total_timeout_s)
    app[CHAIN_KEY] = Chain(transport, [MetricsLayer(recorder), *layers, guard])
    app[RECORDER_KEY] = recorder
    app[SETTINGS_KEY] = {
        "model": model,
        "max_tokens": max_tokens,
        "max_message_chars": max_message_chars,
        "history_budget_tokens": history_budget_tokens,
        "system_prompt": system_prompt,
    }

    async def close_transport(_app: web.Application) -> None:
        await transport.aclose()

    app.on_cleanup.append(close_transport)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/health", health)
    return app


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Run `app` on the current loop; a client that disconnects cancels its handler (and so the upstream)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    return runner, server.sockets[0].getsockname()[1]


__all__ = ["ERROR_MARK", "create_app", "parse_chat", "serve"]

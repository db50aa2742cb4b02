"""/v1/chat/completions: one chat request checked, its answer drawn, and sent whole or as server-sent events.

`check_chat`, `answer_rng`, `draw_answer`, `usage` and `completion` are the one definition of what a chat
request may ask and what its answer is; the online route below and the Batch API (`labkit.sim.batches`) both
use them, so a batch line and an online request are refused with the same error and answered alike.
Streamed chunks are assembled from precomputed byte fragments: a chunk costs a few byte concatenations and
one write.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from array import array
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from labkit.sim import errors
from labkit.sim.config import Profile
from labkit.sim.faults import Decision
from labkit.sim.prefixcache import prompt_tokens
from labkit.sim.state import STATE, STATIC_HEADERS, SimState
from labkit.sim.text import pool_for, request_fingerprint
from labkit.sim.validation import ChatParams, chat_params

_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    **STATIC_HEADERS,
}
_DONE = b"data: [DONE]\n\n"
_ZERO_COMPLETION_DETAILS = {
    "reasoning_tokens": 0,
    "audio_tokens": 0,
    "accepted_prediction_tokens": 0,
    "rejected_prediction_tokens": 0,
}


# -- what every chat request goes through (online and in a batch) ---------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A chat request that passed the profile's checks: the model that serves it and its prompt's tokens."""

    model: str
    tokens: int
    ids: array | None  # the prompt's token stream, for the prefix cache (None when not wanted or too short)


def check_chat(profile: Profile, p: ChatParams, *, want_ids: bool = False) -> Prompt:
    """Refuse what the profile cannot serve, as the real API does: an unknown model, a `max_tokens` above the
    model's output limit, a prompt plus `max_tokens` beyond its context window."""
    model = profile.resolve(p.model)
    if model is None:
        raise errors.model_not_found(p.model)
    cap = p.max_tokens
    if cap is not None and cap > profile.max_output_tokens:
        raise errors.invalid_request(
            f"max_tokens is too large: {cap}. This model supports at most {profile.max_output_tokens} "
            "completion tokens, whereas you provided "
            f"{cap}.",
            param="max_tokens",
            code="invalid_value",
        )
    n_prompt, ids = prompt_tokens(p.messages, model, want_ids=want_ids)
    if n_prompt + (cap or 0) > profile.context_window:
        raise errors.invalid_request(
            f"This model's maximum context length is {profile.context_window} tokens. However, you requested "
            f"{n_prompt + (cap or 0)} tokens ({n_prompt} in the messages, {cap or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
    return Prompt(model, n_prompt, ids)


def answer_rng(st: SimState, p: ChatParams, model: str) -> tuple[random.Random, random.Random]:
    """The draws of an answer: (its length, its text).

    Deterministic per request at temperature 0 or with a `seed`. The length is drawn from the *question* (the last
    user message), the model, `max_tokens` and the seed, not from the whole prompt: a real model's answer length
    follows what is asked, so a trimmed history, a shortened context or a moved instruction must not draw another
    length (lesson 04 and the capstone's trimming lever compare exactly those). The text is drawn from the whole
    request, so different requests still get different answers. Sampled requests take both from the next draw of
    the service's seeded stream (a run is still reproducible in arrival order)."""
    if p.temperature == 0.0 or p.seed is not None:
        text = hashlib.blake2b(st.seed_bytes + request_fingerprint(model, p.messages, p.max_tokens, p.seed))
        length = hashlib.blake2b(
            st.seed_bytes + request_fingerprint(model, _question(p.messages), p.max_tokens, p.seed)
        )
        return random.Random(length.digest()), random.Random(text.digest())
    rng = random.Random(st.rng.getrandbits(64))
    return rng, rng


def _question(messages: Any) -> Any:
    """The last user message's content (the last message's, when no message is the user's)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    last = messages[-1] if messages else None
    return last.get("content") if isinstance(last, dict) else last


def draw_answer(
    profile: Profile, model: str, p: ChatParams, rngs: tuple[random.Random, random.Random]
) -> tuple[list[int], str]:
    """The answer's tokens (length from the profile, cut at `max_tokens`) and its finish reason; `rngs` is what
    `answer_rng` returns."""
    lengths, rng = rngs
    sampled = profile.output_tokens.sample(lengths)
    cap = p.max_tokens
    n = sampled if cap is None else min(cap, sampled)
    pool = pool_for(model)
    finish = "length" if cap is not None and cap < sampled else "stop"
    return pool.generate(rng, n, pool.topic_words(p.messages), whole=finish == "stop"), finish


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """The `usage` object of an answer, with the detail fields the real API sends."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": _ZERO_COMPLETION_DETAILS,
    }


def completion(st: SimState, model: str, tokens: list[int], finish: str, used: dict[str, Any]) -> dict[str, Any]:
    """A whole `chat.completion` object."""
    return {
        "id": "chatcmpl-" + os.urandom(12).hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": pool_for(model).text(tokens),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": used,
        "service_tier": "default",
        "system_fingerprint": st.fingerprint,
    }


# -- the online route -------------------------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Check, admit, wait for a slot, then pace the answer like the profile's server would."""
    st = request.app[STATE]
    loop = asyncio.get_running_loop()
    t_arrival = loop.time()
    key = st.auth(request)
    p = chat_params(await st.read_json(request))
    profile = st.profile
    prompt = check_chat(profile, p, want_ids=True)
    model, n_prompt = prompt.model, prompt.tokens
    estimate = p.max_tokens if p.max_tokens is not None else st.limiter.default_completion_estimate
    decision = st.admit(request, key, p.model, n_prompt + estimate)
    await st.prelude(request, decision)
    start = t_arrival if decision.slow_first_byte_s == 0 else loop.time()
    engine = st.engine
    if await engine.acquire():
        start = loop.time()
    try:
        cached = st.cache.lookup_and_store(model, prompt.ids)
        first_at = start + engine.first_token_delay(n_prompt - cached)
        tokens, finish = draw_answer(profile, model, p, answer_rng(st, p, model))
        used = usage(n_prompt, len(tokens), cached)
        if p.stream:
            resp = await _stream(request, st, model, p, tokens, finish, used, first_at, decision)
        else:
            resp = await _complete(request, st, model, tokens, finish, used, first_at, decision)
        st.limiter.refund(key, estimate - len(tokens))
        return resp
    finally:
        engine.release()


async def _complete(
    request: web.Request,
    st: SimState,
    model: str,
    tokens: list[int],
    finish: str,
    used: dict[str, Any],
    first_at: float,
    decision: Decision,
) -> web.StreamResponse:
    """A non-streaming answer: the same generation time, the whole body at the end."""
    async for _ in st.engine.pace(len(tokens), first_at, coalesce_s=0.25):
        pass
    if decision.drop_at is not None:
        st.abort(request)
    body = completion(st, model, tokens, finish, used)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _stream(
    request: web.Request,
    st: SimState,
    model: str,
    p: ChatParams,
    tokens: list[int],
    finish: str,
    used: dict[str, Any],
    first_at: float,
    decision: Decision,
) -> web.StreamResponse:
    """Server-sent events: role chunk and first token at TTFT, then one chunk per token as it is due.

    The status line and headers go out with the first token, as the real API sends them (its
    `openai-processing-ms` is about the time to first token): nothing is written while the answer is being
    prefilled, so a burst of arrivals costs one write per stream, not two."""
    resp = web.StreamResponse(status=200)
    cid = "chatcmpl-" + os.urandom(12).hex()
    created = int(time.time())
    head = (
        b'data: {"id":"'
        + cid.encode()
        + b'","object":"chat.completion.chunk","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"service_tier":"default","system_fingerprint":"'
        + st.fingerprint.encode()
        + b'","choices":[{"index":0,"delta":{'
    )
    usage_null = b',"usage":null' if p.include_usage else b""
    tail = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
    last_tail = b'},"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + usage_null + b"}\n\n"
    content_head = head + b'"content":'
    pieces = pool_for(model).json
    n = len(tokens)
    stop_at = n  # stream faults cut the answer short after this many tokens
    if decision.drop_at is not None:
        stop_at = min(stop_at, max(1, min(n - 1, int(decision.drop_at * n))) if n > 1 else 0)
    if decision.stream_error_at is not None:
        stop_at = min(stop_at, max(1, min(n - 1, int(decision.stream_error_at * n))) if n > 1 else 0)
    sent = 0

    async def begin() -> None:
        resp.headers.update(_STREAM_HEADERS)
        resp.headers.update(st.response_headers(request, request["t0"]))
        await resp.prepare(request)
        request["status_sent"] = 200

    try:
        pending: list[bytes] = [head + b'"role":"assistant","content":""' + tail]
        async for due in st.engine.pace(n, first_at):
            if not resp.prepared:  # the role chunk and the first token are due
                await begin()
                st.stats.first_token_sent(asyncio.get_running_loop().time() - first_at)
            end = min(sent + due, stop_at)
            for i in range(sent, end):
                pending.append(content_head + pieces[tokens[i]] + (last_tail if i == n - 1 else tail))
            sent = end
            if sent >= stop_at and stop_at < n:
                break
            await resp.write(b"".join(pending))
            pending = []
        if not resp.prepared:  # no token at all (max_tokens=0 is refused, but be safe)
            await begin()
        if stop_at < n:  # a stream fault: the error event wins if both were drawn for the same point
            if decision.stream_error_at is not None and (
                decision.drop_at is None or decision.stream_error_at <= decision.drop_at
            ):
                st.stats.stream_errors += 1
                pending.append(b"data: " + orjson.dumps(errors.server_error().body()) + b"\n\n")
                await resp.write(b"".join(pending))
                await resp.write_eof()
                return resp
            if pending:
                await resp.write(b"".join(pending))
            st.abort(request)
        if p.include_usage:
            final = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": st.fingerprint,
                "choices": [],
                "usage": used,
            }
            pending.append(b"data: " + orjson.dumps(final) + b"\n\n")
        pending.append(_DONE)
        await resp.write(b"".join(pending))
        await resp.write_eof()
    except ConnectionError:
        if not request.get("counted_disconnect"):
            st.stats.disconnects += 1
            request["counted_disconnect"] = True
        raise
    return resp


__all__ = ["Prompt", "answer_rng", "chat_completions", "check_chat", "completion", "draw_answer", "usage"]

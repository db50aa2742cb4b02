"""Lesson 04's prompt sizes fitted to the endpoint's context window, learned with one probe request.

Lesson 04 sends long prompts on purpose (a prompt-length sweep, a long chat history, a long cached prefix). A
small-context server (llama.cpp's `llama-server` at 4096 tokens, a small vLLM deployment) refuses them with a 400
in the middle of the lesson. One probe of the largest prompt the lesson needs, with `max_tokens=1`, tells which:
accepted, nothing changes; refused for its length, the refusal names the window and the server's own count of the
probe, and the sizes are scaled down to fit. A different tokenizer counts the same text differently, so the window
is converted to our tokens (`labkit.tokens`) with the ratio of the two counts of the same probe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import openai

from labkit.lessons.streaming_view import conversation, prompt_of
from labkit.tokens import count_messages

__all__ = ["ContextFit", "context_refusal", "fit_context", "fit_sizes", "history_tokens", "prompt_limit"]

#: Share of the window (in our tokens) the lesson's prompts may fill: the two tokenizers' ratio measured on the
#: probe is not exactly the ratio on every other prompt.
MARGIN = 0.9
#: Tokens the prefix lever adds to `PREFIX_TOKENS` (the shop's header line and the customer's question).
PREFIX_EXTRA = 100

# OpenAI, vLLM and labkit.sim: "This model's maximum context length is N tokens. However, you requested X tokens
# (Y in the messages, Z in the completion)."
_WINDOW = re.compile(r"maximum context length is (\d+) tokens")
_PROMPT = re.compile(r"\((\d+) in the messages")


@dataclass(frozen=True)
class ContextFit:
    """What the probe learned and the lesson's sizes after it (unchanged when the probe was accepted)."""

    window: int | None  # the endpoint's context window in its own tokens; None: the probe was accepted
    probe_tokens: int  # the probe's prompt, counted by labkit.tokens
    server_tokens: int | None  # the same prompt counted by the server (its refusal or its usage)
    changed: bool  # whether any size below differs from what was asked
    prompt_tokens_sweep: list[int]
    prefix_tokens: int
    history_turns: int
    history_budget: int

    def record(self) -> dict[str, Any]:
        """As the results JSON keeps it."""
        return asdict(self)


def context_refusal(body: object) -> tuple[int, int | None] | None:
    """The window and the server's prompt-token count from a 400's error body (the inner `error` object, as
    `openai.APIStatusError.body` holds it, or the whole response body); None when it is not a context refusal.

    llama.cpp's server: `{"type": "exceed_context_size_error", "n_ctx": N, "n_prompt_tokens": P, ...}`;
    OpenAI, vLLM and labkit.sim say it in the message (see `_WINDOW`)."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None
    if body.get("type") == "exceed_context_size_error" and isinstance(body.get("n_ctx"), int):
        prompt = body.get("n_prompt_tokens")
        return body["n_ctx"], prompt if isinstance(prompt, int) else None
    message = body.get("message")
    window = _WINDOW.search(message) if isinstance(message, str) else None
    if window is None:
        return None
    prompt = _PROMPT.search(message)
    return int(window.group(1)), int(prompt.group(1)) if prompt else None


def prompt_limit(window: int, max_tokens: int, *, ours: int, theirs: int | None, margin: float = MARGIN) -> int:
    """The longest prompt, in our tokens, that leaves `max_tokens` of the server's `window` for the answer. Both
    are in the server's tokens; `ours / theirs` (the same probe counted both ways) converts them. Without the
    server's count the tokenizers are taken to agree."""
    return int((window - max_tokens) * ours / (theirs or ours) * margin)


def history_tokens(turns: int, model: str) -> int:
    """The prompt tokens of the lesson's conversation of `turns` question/answer pairs."""
    return count_messages(conversation(turns, session="fit"), model)


def fit_sizes(
    limit: int,
    model: str,
    *,
    prompt_tokens_sweep: Sequence[int],
    prefix_tokens: int,
    history_turns: int,
    history_budget: int,
) -> dict[str, Any]:
    """The lesson's sizes with every prompt at most `limit` of our tokens: sweep points clipped (duplicates
    dropped), the prefix shortened, the history cut to the turns that fit and its budget kept below it."""
    points = list(dict.fromkeys(min(int(p), limit) for p in prompt_tokens_sweep))
    prefix = max(200, min(prefix_tokens, limit - PREFIX_EXTRA))
    turns, history = history_turns, history_tokens(history_turns, model)
    while turns > 1 and history > limit:
        turns -= 1
        history = history_tokens(turns, model)
    budget = history_budget if history_budget < history else history // 2
    return {
        "prompt_tokens_sweep": points,
        "prefix_tokens": prefix,
        "history_turns": turns,
        "history_budget": budget,
    }


async def fit_context(
    endpoint: Any,
    model: str,
    *,
    sweep: Sequence[int],
    prefix_tokens: int,
    history_turns: int,
    history_budget: int,
    max_tokens: int,
    margin: float = MARGIN,
) -> ContextFit:
    """Probe `endpoint` (anything with `base_url` and `api_key`: a lab, an Endpoint) once with the lesson's largest
    prompt plus room for `max_tokens`, and fit the sizes to its window. A refusal for any other reason is raised.

    A refused request generates nothing; an accepted probe costs one prompt's input tokens and one output token."""
    asked = {
        "prompt_tokens_sweep": list(sweep),
        "prefix_tokens": prefix_tokens,
        "history_turns": history_turns,
        "history_budget": history_budget,
    }
    largest = max(*sweep, prefix_tokens + PREFIX_EXTRA, history_tokens(history_turns, model))
    probe = prompt_of(largest + max_tokens, model)
    ours = count_messages(probe, model)
    async with openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key) as client:
        try:
            completion = await client.chat.completions.create(model=model, messages=probe, max_tokens=1)
        except openai.BadRequestError as error:
            refusal = context_refusal(error.body)
            if refusal is None:
                raise
        else:
            theirs = completion.usage.prompt_tokens if completion.usage else None
            return ContextFit(None, ours, theirs, False, **asked)
    window, theirs = refusal
    limit = prompt_limit(window, max_tokens, ours=ours, theirs=theirs, margin=margin)
    fitted = fit_sizes(limit, model, **asked)
    return ContextFit(window, ours, theirs, fitted != asked, **fitted)

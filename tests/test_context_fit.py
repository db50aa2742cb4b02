"""Lesson 04 fits its prompt sizes to a small context window, learned from one refused probe.

The simulated service serves a 4096-token window here (a copy of data/profiles.json's gpt-4o-class entry, passed
with `--profiles`), and refuses longer prompts as OpenAI and vLLM do. llama.cpp's server answers in another shape;
no llama-server runs in CI, so its parsing is checked on the error body it returned when this module was written
(`bash /work/shared/tools/real_server.sh`, a 2000-token `prompt_of` prompt, `max_tokens=1`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from labkit.lab.services import SimService, start_sim
from labkit.lessons.context_fit import context_refusal, fit_context, fit_sizes, prompt_limit
from labkit.lessons.streaming_view import FILLER, conversation, prompt_of
from labkit.sim.config import PROFILES_PATH
from labkit.tokens import count_messages

WINDOW = 4096
MODEL = "gpt-4o"
#: Lesson 04's learner defaults (its parameters cell): every one of its long prompts exceeds 4096 tokens.
DEFAULTS: dict[str, Any] = {
    "sweep": [100, 4000, 12000],
    "prefix_tokens": 6000,
    "history_turns": 40,
    "history_budget": 2000,
    "max_tokens": 32,
}
#: llama.cpp's `llama-server` (4096-token slots) refusing a prompt of 1842 tokens by labkit.tokens' count.
LLAMA_CPP_BODY = {
    "code": 400,
    "message": "request (5265 tokens) exceeds the available context size (4096 tokens), try increasing it",
    "type": "exceed_context_size_error",
    "n_prompt_tokens": 5265,
    "n_ctx": 4096,
}


def small_context_profiles(path: Path, window: int, profile: str = "gpt-4o-class") -> Path:
    """A profiles file holding one profile of data/profiles.json with its context window set to `window`."""
    entry = json.loads(PROFILES_PATH.read_text(encoding="utf-8"))["profiles"][profile]
    path.write_text(json.dumps({"profiles": {profile: {**entry, "context_window": window}}}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimService]:
    profiles = small_context_profiles(tmp_path_factory.mktemp("ctx") / "profiles.json", WINDOW)
    with start_sim("gpt-4o-class", seed=3, args=["--profiles", str(profiles)]) as service:
        yield service


def refusal_body(sim: SimService, messages: list[dict], max_tokens: int) -> object:
    """The error body of the 400 the service answers, as the openai SDK hands it over."""
    client = openai.OpenAI(base_url=sim.base_url, api_key=sim.api_key, max_retries=0)
    with client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)
    return refused.value.body


def test_a_context_refusal_names_the_window_and_the_servers_prompt_count(small_sim: SimService) -> None:
    messages = prompt_of(5000, MODEL)
    assert context_refusal(refusal_body(small_sim, messages, 1)) == (WINDOW, count_messages(messages, MODEL))


def test_a_refusal_for_another_reason_is_not_read_as_a_context_refusal(small_sim: SimService) -> None:
    # max_tokens above the profile's output limit: a 400 about max_tokens, not about the context
    assert context_refusal(refusal_body(small_sim, prompt_of(100, MODEL), 10**6)) is None


def test_llama_cpp_refusal_body_names_the_window_and_its_prompt_count() -> None:
    assert context_refusal(LLAMA_CPP_BODY) == (4096, 5265)


def test_llama_cpp_refusal_is_read_inside_a_whole_response_body() -> None:
    assert context_refusal({"error": LLAMA_CPP_BODY}) == (4096, 5265)


def test_a_server_counting_more_tokens_leaves_fewer_of_ours() -> None:
    same = prompt_limit(4096, 8, ours=1842, theirs=1842)
    llama = prompt_limit(4096, 8, ours=1842, theirs=5265)
    assert llama == int(same * 1842 / 5265)


async def test_an_accepted_probe_changes_no_size(sim: SimService) -> None:
    fit = await fit_context(sim, MODEL, **DEFAULTS)  # 'fast': a 128000-token window
    assert (fit.window, fit.changed) == (None, False)
    assert fit.server_tokens == fit.probe_tokens  # the service counts with the same tokenizer
    assert (fit.prompt_tokens_sweep, fit.prefix_tokens, fit.history_turns, fit.history_budget) == (
        DEFAULTS["sweep"],
        DEFAULTS["prefix_tokens"],
        DEFAULTS["history_turns"],
        DEFAULTS["history_budget"],
    )


async def test_a_refused_probe_learns_the_window(small_sim: SimService) -> None:
    fit = await fit_context(small_sim, MODEL, **DEFAULTS)
    assert (fit.window, fit.server_tokens, fit.changed) == (WINDOW, fit.probe_tokens, True)


async def test_every_fitted_prompt_is_served_by_the_small_context(small_sim: SimService) -> None:
    fit = await fit_context(small_sim, MODEL, **DEFAULTS)
    instructions = "Policies follow. " + FILLER * max(1, fit.prefix_tokens // 200)  # as lesson 04 builds them
    prefix = [{"role": "system", "content": instructions}, {"role": "user", "content": "Where is my order?"}]
    prompts = [prompt_of(n, MODEL) for n in fit.prompt_tokens_sweep] + [conversation(fit.history_turns), prefix]
    async with openai.AsyncOpenAI(base_url=small_sim.base_url, api_key=small_sim.api_key, max_retries=0) as client:
        for messages in prompts:  # a refusal raises here
            await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=DEFAULTS["max_tokens"])


def test_a_history_cut_below_its_budget_gets_a_smaller_budget() -> None:
    # 1200 tokens hold 4 turns (1132 tokens), fewer than the budget of 2000: trimming would keep them all
    sizes = {k: v for k, v in DEFAULTS.items() if k not in ("sweep", "max_tokens")}
    fitted = fit_sizes(1200, MODEL, prompt_tokens_sweep=DEFAULTS["sweep"], **sizes)
    history = count_messages(conversation(fitted["history_turns"]), MODEL)
    assert fitted["history_budget"] < history <= 1200


async def test_an_error_that_is_not_a_context_refusal_is_raised(small_sim: SimService) -> None:
    with pytest.raises(openai.NotFoundError):
        await fit_context(small_sim, "no-such-model", **DEFAULTS)

"""Every notebook runs to its end against an endpoint the lab did not start (issue 13, items 3 and 4).

The simulated service is started here, by the test, as an external server with its admin routes switched off
(`--no-admin`), and the kernel finds it only through `OPENAI_BASE_URL`/`OPENAI_API_KEY`, as a learner's real
provider. Each notebook must then skip, in one visible line, exactly the sections that need fault injection,
rate-limit control or the service's counters, and list them under "skipped" in its results JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nbrun import NOTEBOOKS, run_notebook
from test_context_fit import small_context_profiles
from test_nb_02_dedup import SIZES as DEDUP_SIZES
from test_nb_03_streaming import PARAMETERS as STREAMING_SIZES
from test_nb_04_request_levers import PARAMETERS as LEVERS_SIZES
from test_nb_05_webchat import PARAMETERS as WEBCHAT_SIZES

from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.lab.services import SimService, start_lab, start_sim

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(180)]

EXTERNAL_KEY = "sk-external-provider"

#: Each notebook's test sizes (as its tests/test_nb_*.py passes them, trimmed where a size only sharpens a
#: measurement that the external run skips anyway) and the sections it must skip against an external endpoint.
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "00_index": ({"PROFILE": "fast", "MODEL": "gpt-4o-mini", "N_REQUESTS": 6, "MAX_TOKENS": 30}, []),
    "01_batching": (
        {
            "SIM_TTFT": 0.05,
            "SIM_TPS": 1000.0,
            "N_ITEMS": 20,
            "RPM": 1200,
            "TPM": 60_000,
            "BURST_S": 0.5,
            "SWEEP": [2, 8],
        },
        ["gather against the rate limit", "a semaphore", "the token bucket", "the admission layer"],
    ),
    "02_dedup": (
        DEDUP_SIZES,
        ["the server's own call counts", "errors reach every waiter"],
    ),
    "03_streaming": (
        STREAMING_SIZES,
        ["broken streams", "the server's disconnect count"],
    ),
    "04_request_levers": (
        LEVERS_SIZES,
        [],
    ),
    "05_webchat": (WEBCHAT_SIZES, []),
    "06_cache_tiers": (
        {
            "PROFILE": "fast",
            "MODEL": "gpt-4o",
            "SIM_TPS": 400,
            "MAX_TOKENS": 20,
            "LAG_REQUESTS": 100,
            "WARM_KEYS": 5,
            "HIT_SAMPLES": 100,
            "MISS_SAMPLES": 3,
            "N_REQUESTS": 60,
            "CONCURRENCY": 1,
            "OUTAGE_REQUESTS": 30,
            "OUTAGE_GAP_S": 0.05,
            "OUTAGE_RETRY_S": 0.2,
        },
        [],
    ),
    "07_semantic_cache": (
        {"PROFILE": "fast", "MODEL": "gpt-4o", "SIM_TPS": 400, "MAX_TOKENS": 20, "N_REQUESTS": 30, "CONCURRENCY": 1},
        [],
    ),
    "08_pooling": (
        {
            "REQUESTS": 24,
            "CONCURRENCY": 8,
            "POOL_SIZE": 2,
            "POOL_CALLERS": 16,
            "TRANSPORT_REQUESTS": 128,
            "TRANSPORT_CONCURRENCY": 32,
            "STREAMS": 40,
            "STREAM_TOKENS": 10,
        },
        [
            "Build it · a client per request vs one pooled client",
            "The labkit layer · ClientPool",
            "The labkit layer · pool limits",
            "The labkit layer · transports compared",
        ],
    ),
    "09_retries": (
        {"N_CALLS": 20, "N_HEADLINE": 20, "CONCURRENCY": 8, "DEADLINE_S": 3.0, "N_SICK": 10},
        [
            "The common advice · under faults",
            "The common advice · pitfalls",
            "Build it · the retry loop under faults",
            "Build it · a retry budget",
            "The labkit layer · the decision table",
            "The labkit layer · the retry budget",
            "The labkit layer · failures per arm",
        ],
    ),
    "10_breakers": (
        {"N_CALLS": 12, "N_SICK": 10, "N_HEDGE": 20, "N_BREAKER": 30, "N_BALANCE": 30},
        [
            "The common advice · round robin",
            "Build it · a breaker on a sick upstream",
            "Build it · P2C on a slow upstream",
            "Build it · hedging at p90",
            "The labkit layer · the breaker timeline",
            "The labkit layer · balancing",
            "The labkit layer · hedging",
        ],
    ),
    "11_monitoring": (
        {
            "PROFILE": "fast",
            "MODEL": "gpt-4o",
            "RATE_RPS": 25.0,
            "PHASE_S": 3.0,
            "MAX_TOKENS": 10,
            "N_PROMPTS": 30,
            "MEMORY_SWEEP": [1000, 10_000, 50_000],
            "DASH_WINDOW_S": 2.0,
            "REFRESH_S": 0.25,
            "ALERT_LONG_S": 6.0,
            "ALERT_SHORT_S": 2.0,
        },
        ["the faults phase of the load", "the alerts after the faults"],
    ),
    "12_capstone": (
        {"ARM_REQUESTS": 150, "LEVER_REQUESTS": 20, "FAULT_REQUESTS": 20, "INTERACTIVE": False},
        ["the injected faults", "the guide's table", "the cost levers"],
    ),
}


@pytest.fixture(scope="module")
def external() -> Iterator[SimService]:
    """The simulated service as a provider the lab did not start: no /admin routes, one key it accepts."""
    service = start_sim("fast", seed=7, no_admin=True, api_key=[EXTERNAL_KEY])
    try:
        yield service
    finally:
        service.stop()


def test_a_server_the_lab_did_not_start_is_not_simulated_even_with_the_local_key(
    external: SimService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", external.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", LOCAL_API_KEY)  # the simulator's own placeholder key
    lab = start_lab(redis=False, memcached=False)
    assert (lab.simulated, [e.is_simulated for e in lab.endpoints]) == (False, [False])
    assert not Endpoint(external.base_url, LOCAL_API_KEY).is_simulated


def test_a_service_the_lab_started_is_simulated(external: SimService) -> None:
    assert external.endpoint.is_simulated


def test_the_external_service_serves_no_admin_routes(external: SimService) -> None:
    headers = {"Authorization": f"Bearer {EXTERNAL_KEY}"}
    assert httpx.get(f"{external.url}/admin/stats", headers=headers).status_code == 404
    assert httpx.get(f"{external.base_url}/models", headers=headers).status_code == 200


def test_every_notebook_has_an_external_case() -> None:
    assert sorted(CASES) == sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_completes_against_an_external_endpoint_and_lists_its_skips(
    name: str, external: SimService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters, skipped = CASES[name]
    # papermill's kernel is a subprocess of this one: it inherits this environment
    monkeypatch.setenv("OPENAI_BASE_URL", external.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", EXTERNAL_KEY)
    results = run_notebook(name, tmp_path, **parameters)
    assert results["skipped"] == skipped


#: An OpenAI-compatible server of your own to run every notebook against (`LABKIT_REAL_BASE_URL`, and
#: `LABKIT_REAL_API_KEY` if it checks one), for example llama.cpp's `llama-server` on a tiny model. CI has none.
REAL_BASE_URL = os.environ.get("LABKIT_REAL_BASE_URL")


@pytest.mark.skipif(not REAL_BASE_URL, reason="no server of your own: set LABKIT_REAL_BASE_URL to run these")
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_completes_against_your_own_server(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parameters, skipped = CASES[name]
    monkeypatch.setenv("OPENAI_BASE_URL", str(REAL_BASE_URL))
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("LABKIT_REAL_API_KEY", "sk-your-own-server"))
    results = run_notebook(name, tmp_path, **parameters)
    assert results["skipped"] == skipped


def run_levers_against_a_small_context(window: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Lesson 04 at its external sizes against an external 'fast' service whose context window is `window`."""
    profiles = small_context_profiles(tmp_path / "profiles.json", window, "fast")
    args = ["--profiles", str(profiles)]
    with start_sim("fast", seed=7, no_admin=True, api_key=[EXTERNAL_KEY], args=args) as service:
        monkeypatch.setenv("OPENAI_BASE_URL", service.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", EXTERNAL_KEY)
        return run_notebook("04_request_levers", tmp_path, **CASES["04_request_levers"][0])


def test_request_levers_runs_to_the_end_unchanged_against_a_4096_token_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its longest prompt at these sizes (the 12-turn history) is about 3300 tokens: the probe is accepted
    results = run_levers_against_a_small_context(4096, tmp_path, monkeypatch)
    assert (results["context"]["window"], results["context"]["changed"], results["skipped"]) == (None, False, [])


def test_request_levers_shrinks_its_prompts_to_a_2048_token_context_and_runs_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = run_levers_against_a_small_context(2048, tmp_path, monkeypatch)
    assert (results["context"]["window"], results["context"]["changed"], results["skipped"]) == (2048, True, [])
    sent = [modes["stream"]["prompt_tokens"] for modes in results["by_prompt_tokens"].values()]
    sent += [results["levers"][name]["before"]["prompt_tokens"] for name in ("history", "prefix_cache")]
    assert max(sent) + CASES["04_request_levers"][0]["MAX_TOKENS"] <= 2048

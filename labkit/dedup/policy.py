"""Which requests may share one answer, and under which key.

Two requests may share an answer only when they would get the same answer: same model, same messages, same
generation parameters. `ChatRequest.key` is that canonical fingerprint. What it leaves out on purpose:
`ChatRequest.metadata` (request ids, user tags) and the volatile API fields (`user`, `metadata`, `stream`,
...). A caller can mark further parameters as volatile for one request with `controls={"volatile": [...]}`
(for example a tracing field sent through `extra_body`); `key_of` honours that mark.

The fingerprint alone knows nothing of who sends the request: two tenants asking the same question have the
same fingerprint, but must never share an answer or an error. The layers therefore share by the request's
scope (`labkit.scope.Scope`: tenant, namespace, model and fingerprint), never by `key_of` alone.

Temperature above zero is a policy decision, not a detail: two sampled answers to the same prompt are
*supposed* to differ. `SamplingPolicy` makes the decision explicit and configurable:

- ``"skip"`` (the default): sampled requests are never coalesced or cached;
- ``"share"``: they are treated like deterministic ones (every caller gets the same sample);
- ``"samples"``: keep up to ``samples`` distinct answers per key (up to that many upstream calls run at
  once; a cache keeps that many answers and hands them out in turn).

The API's default temperature is 1, so a request that does not set `temperature` *is* sampled.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from labkit.fingerprint import API_DEFAULTS
from labkit.request import ChatRequest

SamplingMode = Literal["skip", "share", "samples"]


def key_of(request: ChatRequest) -> str:
    """The request's canonical fingerprint (`ChatRequest.key`, which honours volatile marks in its controls).

    Tenant-blind: a layer that shares between requests keys on `labkit.scope.Scoping.of(request)` instead."""
    return request.key


def is_sampled(request: ChatRequest) -> bool:
    """True when the answer is drawn at random: temperature above zero (the API default is 1)."""
    temperature = request.params.get("temperature")
    if temperature is None:
        temperature = API_DEFAULTS["temperature"]
    return float(temperature) > 0.0


@dataclasses.dataclass(frozen=True)
class SamplingPolicy:
    """What de-duplication does with sampled (temperature > 0) requests."""

    mode: SamplingMode = "skip"
    samples: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "share", "samples"):
            raise ValueError(f"mode must be 'skip', 'share' or 'samples', not {self.mode!r}")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")

    @classmethod
    def skip(cls) -> SamplingPolicy:
        return cls("skip")

    @classmethod
    def share(cls) -> SamplingPolicy:
        return cls("share")

    @classmethod
    def keep(cls, samples: int) -> SamplingPolicy:
        """Keep up to `samples` distinct answers per key."""
        return cls("samples", samples)

    def slots(self, request: ChatRequest) -> int:
        """How many distinct answers this request's key may have: 0 means do not de-duplicate it at all."""
        if request.controls.get("no_dedup"):
            return 0
        if not is_sampled(request):
            return 1
        if self.mode == "skip":
            return 0
        if self.mode == "share":
            return 1
        return self.samples

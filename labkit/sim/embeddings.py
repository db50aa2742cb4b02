"""/v1/embeddings: deterministic unit vectors, paced like the profile's embedding model.

The vector of an input is drawn from a hash of (model, input): the same text always gets the same vector, so
runs are reproducible, but similar texts do not get similar vectors (the service stands in for the cost and
latency of the call, not for a model's meaning).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from labkit.sim import errors
from labkit.sim.state import STATE
from labkit.sim.validation import embedding_params
from labkit.tokens import count_text


def _vector(model: str, item: str | list[int], native_dim: int, dim: int) -> np.ndarray:
    """A deterministic unit vector from a hash of the input (shortened vectors are re-normalised, as
    text-embedding-3's `dimensions` does)."""
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    seed = int.from_bytes(hashlib.blake2b(model.encode() + b"\0" + data, digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(native_dim, dtype=np.float32)[:dim]
    return v / np.linalg.norm(v)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """Check, admit, wait the profile's embedding latency, answer floats or base64."""
    st = request.app[STATE]
    loop = asyncio.get_running_loop()
    t_arrival = loop.time()
    key = st.auth(request)
    p = embedding_params(await st.read_json(request))
    native = st.profile.embedding_models.get(p.model)
    if native is None:
        raise errors.model_not_found(p.model)
    dim = native
    if p.dimensions is not None:
        if p.model == "text-embedding-ada-002":
            raise errors.invalid_request("This model does not support specifying dimensions.", param="dimensions")
        if p.dimensions > native:
            raise errors.invalid_request(
                f"Invalid 'dimensions': at most {native} for {p.model}, got {p.dimensions}.",
                param="dimensions",
                code="invalid_value",
            )
        dim = p.dimensions
    counts = [count_text(x, p.model) if isinstance(x, str) else len(x) for x in p.inputs]
    for i, c in enumerate(counts):
        if c > 8192:
            raise errors.invalid_request(
                f"This model's maximum context length is 8192 tokens, however you requested {c} tokens "
                f"(input {i}). Please reduce your prompt.",
                param="input",
                code="context_length_exceeded",
            )
    total = sum(counts)
    decision = st.admit(request, key, p.model, total)
    await st.prelude(request, decision)
    prof = st.profile
    delay = prof.embedding_latency_s + (total / prof.embedding_tokens_per_s if prof.embedding_tokens_per_s else 0)
    remaining = t_arrival + delay - loop.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
    if decision.drop_at is not None:
        st.abort(request)
    data = []
    for i, item in enumerate(p.inputs):
        v = _vector(p.model, item, native, dim)
        emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if p.encoding_format == "base64" else v
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body = {"object": "list", "data": data, "model": p.model, "usage": {"prompt_tokens": total, "total_tokens": total}}
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


__all__ = ["embeddings"]

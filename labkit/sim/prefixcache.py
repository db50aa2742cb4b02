"""Prompt tokens and OpenAI-style prompt-prefix caching.

Like OpenAI's automatic prompt caching: only prompts of at least 1024 tokens are eligible, and the cached
part is the longest previously seen prefix in steps of 128 tokens (starting at 1024). Cached tokens skip
prefill time and are reported as `usage.prompt_tokens_details.cached_tokens`. Prefixes are hashed
incrementally, 128 tokens at a time, and kept in a bounded LRU per model whose entries expire after a
period of inactivity (OpenAI keeps them for minutes).

The prompt's token stream mirrors `labkit.tokens.count_messages` exactly (framing tokens included), so
its length is `usage.prompt_tokens` and matches the client-side estimate. Encodings of recent texts are kept in
a small LRU: lab workloads repeat system prompts, contexts and questions, and the BPE encoding of a long context
is the largest fixed cost of a request in the simulator (which should spend its CPU on streaming, not on this).
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from labkit.tokens import REPLY_PRIMER, TOKENS_PER_MESSAGE, TOKENS_PER_NAME, encoding_for, message_text

MIN_CACHED = 1024
BLOCK = 128
_FRAME = 0xFFFFFF00  # stands for framing tokens in the hashed stream (not a real token id)


@lru_cache(maxsize=4096)
def _encoded(model: str, text: str) -> tuple[int, ...]:
    return tuple(encoding_for(model).encode(text))


def prompt_tokens(messages: Sequence[Mapping[str, Any]], model: str, want_ids: bool) -> tuple[int, array | None]:
    """(prompt token count, token stream or None). The stream is built only when `want_ids` and the
    prompt is long enough to be cached, since short prompts never are."""
    parts: list[Sequence[int]] = []
    total = REPLY_PRIMER
    for m in messages:
        role = _encoded(model, str(m.get("role", "")))
        content = _encoded(model, message_text(m.get("content")))
        total += TOKENS_PER_MESSAGE + len(role) + len(content)
        parts.append([_FRAME, *role, _FRAME + 1])
        parts.append(content)
        parts.append([_FRAME + 2])
        if m.get("name"):
            name = _encoded(model, str(m["name"]))
            total += TOKENS_PER_NAME + len(name)
            parts.append([_FRAME + 3, *name])
    if not want_ids or total < MIN_CACHED:
        return total, None
    ids = array("I")
    for p in parts:
        ids.extend(p)
    ids.extend([_FRAME + 4] * REPLY_PRIMER)
    return total, ids


class PrefixCache:
    """Bounded LRU of prompt-prefix hashes per model, with inactivity expiry."""

    def __init__(self, max_entries: int = 200_000, ttl_s: float = 600.0) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._lru: dict[str, OrderedDict[bytes, float]] = {}

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return sum(len(d) for d in self._lru.values())

    def lookup_and_store(self, model: str, ids: array | None) -> int:
        """Cached tokens for this prompt (0, or a multiple of 128 >= 1024); remembers its prefixes."""
        if ids is None or len(ids) < MIN_CACHED:
            return 0
        lru = self._lru.setdefault(model, OrderedDict())
        now = time.monotonic()
        raw = memoryview(ids.tobytes())
        step = BLOCK * ids.itemsize
        h = hashlib.blake2b(digest_size=16)
        cached = 0
        n_blocks = len(ids) // BLOCK
        for b in range(n_blocks):
            h.update(raw[b * step : (b + 1) * step])
            length = (b + 1) * BLOCK
            if length < MIN_CACHED:
                continue
            key = h.digest()
            seen = lru.get(key)
            if seen is not None and now - seen <= self.ttl_s:  # a chained hash: the whole prefix was seen
                cached = length
            lru[key] = now
            lru.move_to_end(key)
        while len(lru) > self.max_entries:
            lru.popitem(last=False)
        return cached

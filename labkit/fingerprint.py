"""The canonical fingerprint of a chat request.

The common advice keys a cache on `md5(prompt)`, so a request that differs only in model, temperature,
`max_tokens` or tools is served another request's answer. labkit's key covers the model, every message
and every generation parameter, serialised as canonical JSON (sorted keys, no whitespace, integral floats
written as integers, API defaults dropped) and hashed with SHA-256. Parameters that never change the answer
(`user`, `metadata`, `stream`, ...) are left out so they do not split the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

#: Parameters that change how an answer is delivered or labelled, not what it says.
VOLATILE_PARAMS: frozenset[str] = frozenset(
    {"user", "metadata", "store", "stream", "stream_options", "timeout", "extra_headers", "service_tier"}
)

#: The API's documented defaults: sending them or leaving them out is the same request.
API_DEFAULTS: Mapping[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "parallel_tool_calls": True,
}


def _normalise(value: Any) -> Any:
    """Make equal requests serialise equally: 0.0 == 0, tuples are lists, mappings are dicts."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def canonical_params(params: Mapping[str, Any], volatile: Iterable[str] = ()) -> dict[str, Any]:
    """The generation parameters that decide the answer, normalised."""
    skip = VOLATILE_PARAMS.union(volatile) if volatile else VOLATILE_PARAMS  # no new set per request
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in skip:
            continue
        if type(value) not in _PLAIN:  # every request has a few parameters: no call for an int, str or bool
            value = _normalise(value)
        default = API_DEFAULTS.get(name, _NO_DEFAULT)
        if default is not _NO_DEFAULT and value == default:
            continue
        out[name] = value
    return out


_PLAIN = frozenset({int, str, bool})  # what `_normalise` returns unchanged (exact types: a subclass is normalised)
_NO_DEFAULT = object()


def canonical_json(
    model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], volatile: Iterable[str] = ()
) -> bytes:
    """The canonical JSON document that the fingerprint hashes."""
    document = {"model": model, "messages": messages, "params": canonical_params(params, volatile)}
    try:  # messages are plain JSON in practice: serialise them as they are (the hot path)
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # other mappings or sequences: normalise first
        document["messages"] = _normalise(messages)
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def fingerprint(
    model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], volatile: Iterable[str] = ()
) -> str:
    """SHA-256 hex digest of the canonical JSON of a request."""
    return hashlib.sha256(canonical_json(model, messages, params, volatile)).hexdigest()

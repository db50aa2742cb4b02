"""What every cache tier shares: the stored entry, its versioned JSON codec, and the tier interface.

Values are stored as versioned JSON (``{"v": 1, "kind": ..., "key": ..., "data": ...}``), never pickle: a pickle
read back from a shared Redis or a file on disk runs whatever code it names, and it breaks when a class changes.
A blob that fails to parse or to validate (wrong version, wrong key, a completion the SDK's model rejects) raises
`CorruptEntry`; the cache layer treats it as a miss, deletes it and counts it. Large blobs may be zlib-compressed
(a one-byte ``Z`` prefix tells them apart from JSON, which starts with ``{``).
"""

from __future__ import annotations

import dataclasses
import time
import weakref
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from labkit.body import completion_json, rebuild
from labkit.stream import chunk_text, merge_chunks

#: Bump when the stored layout changes: older blobs are then misses (and deleted), never misread.
FORMAT_VERSION = 1
_COMPRESSED = b"Z"

EntryKind = Literal["completion", "stream"]

# What a stream entry's JSON holds besides its text, in bytes per chunk (measured on the simulated service's
# answers; a real service's are of the same size), and what the envelope adds to any entry besides its key
_CHUNK_FRAMING = 300
_ENVELOPE = 100


def _utf8_len(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class CorruptEntry(ValueError):
    """A stored blob that is not a valid entry of this format (treated as a miss, deleted, counted)."""


class EntryTooLarge(ValueError):
    """A tier refused an entry that exceeds its item limit (Memcached: 1 MiB), with the sizes in the message."""


@dataclasses.dataclass(frozen=True)
class RecordedChunk:
    """One streamed chunk and when it arrived, in seconds after the request was sent."""

    at_s: float
    chunk: ChatCompletionChunk


class _Replaying(list):  # type: ignore[type-arg]
    """A stream entry's chunks rebuilt for the replays in flight (a list: a tuple cannot be weakly referenced)."""

    __slots__ = ("__weakref__",)


#: One validator for a list of chunks: pydantic builds (or dumps) all of them in one call, 2-3 µs a chunk.
_CHUNKS: TypeAdapter[list[ChatCompletionChunk]] = TypeAdapter(list[ChatCompletionChunk])
#: `Entry.merged` of an answer that `merge_chunks` returns as recorded (several choices, tool calls, logprobs).
_UNMERGEABLE = b""


def _chunks_json(chunks: Sequence[ChatCompletionChunk]) -> bytes:
    return _CHUNKS.dump_json(list(chunks), exclude_unset=True, warnings=False)


class Entry:
    """One cached answer: a whole completion, or a stream's chunks with their timing.

    `expires_at` and `created_at` are wall-clock epoch seconds (a disk tier outlives the process, so a monotonic
    clock would not do).

    An entry keeps its answer as JSON (bytes), not as pydantic objects: bytes are one object the garbage collector
    never walks. A stream's ~150 chunks were ~1,500 objects per cached answer that every full collection walked (the
    capstone's p95 TTFT was set by hits that arrived during those pauses), and a completion's dozen objects, kept for
    every miss, were most of the collector's work on a cache miss (`python -m labkit.lessons.overhead` reports the
    collector's share of each arm's CPU). A completion's JSON is the body its transport received, when the transport
    kept it (`labkit.body`: nothing is encoded on a miss). `completion` rebuilds a completion for each caller, a few
    µs more than copying kept objects (`python -m labkit.lessons.cache --bench` measures the hit). A stream keeps its
    chunks' arrival times as one tuple of floats, and `chunks` rebuilds them in one pydantic call when a replay asks,
    and shares them with the replays still in flight (a weak reference: the entry itself keeps none); `merged` keeps
    its two chunks as JSON too. The price is CPU on a replay of every chunk: an instant or paced replay rebuilds every
    chunk (an order of magnitude more CPU than handing out kept objects), while a merged replay (the default chain's)
    rebuilds two.
    """

    __slots__ = ("_blob", "_json", "_live", "_merged", "_times", "_weight",
                 "created_at", "expires_at", "key", "kind")  # fmt: skip

    def __init__(
        self,
        key: str,
        kind: EntryKind,
        created_at: float,
        expires_at: float,
        completion: ChatCompletion | None = None,
        chunks: Sequence[RecordedChunk] = (),
    ) -> None:
        if kind == "completion" and completion is None:
            raise ValueError("a completion entry needs its completion")
        if kind == "stream" and not chunks:
            raise ValueError("a stream entry needs at least one chunk")
        self.key, self.kind, self.created_at, self.expires_at = key, kind, created_at, expires_at
        self._merged: bytes | None = None
        self._blob: bytes | None = None
        self._live: weakref.ref[_Replaying] | None = None
        if kind == "stream":
            self._times: tuple[float, ...] = tuple(float(recorded.at_s) for recorded in chunks)
            self._json: bytes = _chunks_json([recorded.chunk for recorded in chunks])
            self._weight = _stream_weight(recorded.chunk for recorded in chunks)
        else:
            assert completion is not None
            self._times, self._json = (), completion_json(completion)  # as it arrived, when a transport kept it
            self._weight = _json_weight(key, self._json)

    @classmethod
    def _stored(
        cls,
        key: str,
        kind: EntryKind,
        created_at: float,
        expires_at: float,
        data_json: bytes,
        times: tuple[float, ...] = (),
        weight: int | None = None,
    ) -> Entry:
        """An entry from its stored parts (`decode`: the completion or the chunks are validated already)."""
        entry = cls.__new__(cls)
        entry.key, entry.kind, entry.created_at, entry.expires_at = key, kind, created_at, expires_at
        entry._merged, entry._blob, entry._live = None, None, None
        entry._times, entry._json = times, data_json
        entry._weight = weight if weight is not None else _json_weight(key, data_json)
        return entry

    @classmethod
    def of_completion(cls, key: str, completion: ChatCompletion, ttl_s: float, now: float | None = None) -> Entry:
        now = time.time() if now is None else now
        return cls(key, "completion", now, now + ttl_s, completion=completion)

    @classmethod
    def of_stream(cls, key: str, chunks: Sequence[RecordedChunk], ttl_s: float, now: float | None = None) -> Entry:
        now = time.time() if now is None else now
        return cls(key, "stream", now, now + ttl_s, chunks=chunks)

    @property
    def completion(self) -> ChatCompletion | None:
        """A completion entry's answer, rebuilt from its JSON: a new object for every caller (None for a stream)."""
        if self.kind != "completion":
            return None
        return rebuild(self._json)

    def ttl_left(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.ttl_left(now) <= 0

    @property
    def chunks(self) -> Sequence[RecordedChunk]:
        """A stream entry's chunks with their timing (read-only: the replays in flight share them)."""
        if self.kind != "stream":
            return ()
        live = self._live() if self._live is not None else None
        if live is None:
            live = _Replaying(map(RecordedChunk, self._times, _CHUNKS.validate_json(self._json)))
            self._live = weakref.ref(live)
        return live

    @property
    def merged(self) -> list[ChatCompletionChunk]:
        """A stream entry's answer as one chunk plus usage (`labkit.stream.merge_chunks`), rebuilt from its JSON
        (merged once; rebuilding the two chunks adds about 5 µs to a hit, and each caller gets its own)."""
        if self._merged is None:  # from the chunks of a replay in flight, or rebuilt for this call only
            live = self._live() if self._live is not None else None
            recorded = [r.chunk for r in live] if live is not None else _CHUNKS.validate_json(self._json)
            merged = merge_chunks(recorded)
            unchanged = len(merged) == len(recorded) and all(a is b for a, b in zip(merged, recorded, strict=True))
            self._merged = _UNMERGEABLE if unchanged else _chunks_json(merged)
            return merged
        if self._merged == _UNMERGEABLE:
            return [r.chunk for r in self.chunks]
        return _CHUNKS.validate_json(self._merged)

    @property
    def blob(self) -> bytes:
        """The versioned JSON document (computed once, shared by every tier that stores it)."""
        if self._blob is None:
            self._blob = encode(self)
        return self._blob

    @property
    def size(self) -> int:
        """Bytes of the stored JSON (encodes the entry if no tier has yet)."""
        return len(self.blob)

    @property
    def weight(self) -> int:
        """About `size`, without encoding the envelope: a completion's JSON, or a stream's texts' UTF-8 bytes plus a
        fixed framing per chunk. What an in-process tier bounds its bytes by."""
        return self._weight


def _json_weight(key: str, data_json: bytes) -> int:
    """An entry's stored size without encoding it: its answer's JSON plus the envelope around it."""
    return len(data_json) + len(key) + _ENVELOPE


def _stream_weight(chunks: Iterable[ChatCompletionChunk]) -> int:
    return sum(_CHUNK_FRAMING + _utf8_len(chunk_text(chunk)) for chunk in chunks)


def encode(entry: Entry) -> bytes:
    """Versioned JSON bytes of an entry."""
    if entry.kind == "completion":
        data: Any = orjson.Fragment(entry._json)
    else:
        data = [[at, chunk] for at, chunk in zip(entry._times, orjson.loads(entry._json), strict=True)]
    document = {
        "v": FORMAT_VERSION,
        "kind": entry.kind,
        "key": entry.key,
        "created": entry.created_at,
        "expires": entry.expires_at,
        "data": data,
    }
    return orjson.dumps(document)


def decode(blob: bytes | bytearray | memoryview | str, expected_key: str | None = None) -> Entry:
    """Parse and validate a stored blob; anything unexpected raises `CorruptEntry` (never a half-read entry)."""
    try:
        raw = bytes(blob, "utf-8") if isinstance(blob, str) else bytes(blob)
        if raw[:1] == _COMPRESSED:
            raw = zlib.decompress(raw[1:])
        document = orjson.loads(raw)
    except (orjson.JSONDecodeError, zlib.error, TypeError, ValueError) as error:
        raise CorruptEntry(f"not a JSON entry: {error}") from error
    if not isinstance(document, Mapping):
        raise CorruptEntry("an entry must be a JSON object")
    if document.get("v") != FORMAT_VERSION:
        raise CorruptEntry(f"entry format {document.get('v')!r}, expected {FORMAT_VERSION}")
    key = document.get("key")
    if expected_key is not None and key != expected_key:
        raise CorruptEntry("the entry belongs to another key")
    kind, created, expires, data = (document.get(k) for k in ("kind", "created", "expires", "data"))
    if not isinstance(created, (int, float)) or not isinstance(expires, (int, float)):
        raise CorruptEntry("an entry needs numeric 'created' and 'expires'")
    try:
        if kind == "completion":
            ChatCompletion.model_validate(data)  # validated here: a bad completion is a miss
            return Entry._stored(str(key), "completion", created, expires, orjson.dumps(data))
        if kind == "stream":
            if not isinstance(data, list) or not data:
                raise CorruptEntry("a stream entry needs a non-empty list of chunks")
            times = tuple(float(at) for at, _ in data)
            raw_chunks = [chunk for _, chunk in data]
            weight = _stream_weight(_CHUNKS.validate_python(raw_chunks))  # validated here: a bad chunk is a miss
            return Entry._stored(str(key), "stream", created, expires, orjson.dumps(raw_chunks), times, weight)
    except CorruptEntry:
        raise
    except (ValueError, TypeError) as error:  # pydantic's ValidationError is a ValueError
        raise CorruptEntry(f"entry does not validate: {str(error).splitlines()[0]}") from error
    raise CorruptEntry(f"unknown entry kind {kind!r}")


def compress(blob: bytes, level: int = 6) -> bytes:
    """zlib with the ``Z`` marker that `decode` recognises."""
    return _COMPRESSED + zlib.compress(blob, level)


@runtime_checkable
class Tier(Protocol):
    """One cache tier. `get` returns a valid, unexpired entry or None, and raises `CorruptEntry` for a bad blob.

    `local` tiers live in the process (no I/O: the layer writes and promotes to them inline); the others are
    reached over a socket or a file, and any exception they raise marks them down for a while (fail-open).
    """

    name: str
    local: bool

    async def get(self, key: str) -> Entry | None: ...

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


__all__ = [
    "FORMAT_VERSION",
    "CorruptEntry",
    "Entry",
    "EntryKind",
    "EntryTooLarge",
    "RecordedChunk",
    "Tier",
    "compress",
    "decode",
    "encode",
]

"""The JSON body an answer arrived as, kept with the completion parsed from it, so a cache need not encode it again.

The exact cache keeps an answer as JSON bytes (`labkit.cache.base.Entry`), and the transport had those bytes a
moment earlier: it parsed them into the `ChatCompletion`. Encoding the completion again was one of the larger costs
of a cache miss through the default chain (the cache layer's own figure in `python -m labkit.lessons.overhead
--layers`). So a transport notes the body it parsed (`keep_body`) and the cache stores it as it came
(`completion_json`).

A note belongs to the object it was made for: a copy (`model_copy`, the de-dup layer's copy for each coalesced
caller) carries the note but does not match it, and is encoded as before. So a layer below the cache that changes
an answer must return a changed copy, never edit the answer in place (docs/ARCHITECTURE.md, "Rules every layer
keeps"). The body is the service's own JSON, fields the SDK's types do not declare included; `rebuild` reads it back
as leniently as the SDK parses an answer, so a body the types do not fully validate is still served from the cache.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
from openai._models import construct_type_unchecked
from openai.types.chat import ChatCompletion

__all__ = ["body_of", "completion_json", "keep_body", "lenient_model", "rebuild"]

_NOTE = "_labkit_body"
_COMPLETION = ChatCompletion.__pydantic_serializer__


def keep_body(completion: ChatCompletion, body: bytes) -> None:
    """Note that `completion` was parsed from `body` (a transport calls it; not serialised with the answer)."""
    completion.__dict__[_NOTE] = (id(completion), body)


def body_of(completion: ChatCompletion) -> bytes | None:
    """The body `completion` itself was parsed from, or None (no note, or the note of the object it was copied from)."""
    note = completion.__dict__.get(_NOTE)
    if note is None or note[0] != id(completion):
        return None
    return note[1]  # type: ignore[no-any-return]


def completion_json(completion: ChatCompletion) -> bytes:
    """The JSON to store for `completion`: the body it arrived as, else the completion encoded (set fields only)."""
    body = body_of(completion)
    if body is None:
        body = _COMPLETION.to_json(completion, exclude_unset=True, warnings=False)
    return body


def lenient_model(cls: type[Any], data: Any) -> Any:
    """`cls` validated from `data`, or, where it does not validate, built the way the SDK builds every answer it
    parses: nested models constructed without validation (`openai._models.construct_type_unchecked`, the SDK's own
    helper), so a field of an unexpected value or type is kept as it came instead of failing the request."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError:
        return construct_type_unchecked(value=data, type_=cls)


def rebuild(body: bytes) -> ChatCompletion:
    """A new `ChatCompletion` from stored JSON: validated, or built as leniently as the transport built it."""
    try:
        return ChatCompletion.model_validate_json(body)
    except pydantic.ValidationError:
        return lenient_model(ChatCompletion, orjson.loads(body))  # type: ignore[no-any-return]

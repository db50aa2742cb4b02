"""The request that travels through the layer chain.

One immutable value carries everything a layer may look at: what is sent upstream (model, messages,
generation parameters, whether to stream), what is *about* the request but never changes its answer
(`metadata`: request ids, user tags), and per-request instructions to labkit's own layers (`controls`:
no-cache, TTL, namespace, timeout ...). Keeping the three apart is what lets the fingerprint be right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from labkit.fingerprint import fingerprint

#: Controls that may carry a credential: shown as `***` in a request's repr.
SECRET_CONTROLS = frozenset({"api_key", "headers"})

T = TypeVar("T")


class _computed_once(Generic[T]):  # lower case: a decorator, like the `cached_property` it replaces
    """`functools.cached_property` without the lock it takes on Python 3.11 on every first read (every request reads
    its fingerprint once): computed on first read and kept in the instance's `__dict__`, which then answers."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> T:
        if instance is None:
            return self  # type: ignore[return-value]
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclasses.dataclass(frozen=True, repr=False)
class ChatRequest:
    """A chat-completion request plus labkit's per-request controls (a per-request key is hidden from its repr)."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stream: bool = False
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    controls: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("ChatRequest.model must be a non-empty string")
        if isinstance(self.messages, (str, bytes)) or not self.messages:
            raise ValueError("ChatRequest.messages must be a non-empty list of messages")
        for reserved in ("model", "messages", "stream"):
            if reserved in self.params:
                raise ValueError(f"{reserved!r} is a field of ChatRequest, not a generation parameter")

    @classmethod
    def create(
        cls,
        model: str,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        stream: bool = False,
        metadata: Mapping[str, Any] | None = None,
        controls: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatRequest:
        """Build a request the way the SDK call reads; a bare string becomes one user message."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return cls(
            model=model,
            messages=list(messages),
            params=params,
            stream=stream,
            metadata=dict(metadata or {}),
            controls=dict(controls or {}),
        )

    @_computed_once
    def key(self) -> str:
        """The canonical fingerprint: the one key cache tiers, de-dup and metrics share.

        Parameters the caller marks volatile for this request (`controls={"volatile": [...]}`) are left out.
        """
        return fingerprint(self.model, self.messages, self.params, volatile=tuple(self.controls.get("volatile", ())))

    def body(self) -> dict[str, Any]:
        """The JSON body sent upstream (streams always ask for usage, so cost is never guessed)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(self.messages), **self.params}
        if self.stream:
            body["stream"] = True
            options = dict(body.get("stream_options") or {})
            options.setdefault("include_usage", True)
            body["stream_options"] = options
        return body

    def replace(self, **changes: Any) -> ChatRequest:
        """A copy with some fields changed (a fallback layer swaps the model, a cache adds controls)."""
        return dataclasses.replace(self, **changes)

    def with_controls(self, **controls: Any) -> ChatRequest:
        """A copy with these controls added. Layers call it on every request (the retry and hedge layers once per
        attempt), so it copies the fields as they are, without `replace`'s checks (the fields it checks do not
        change), and keeps the fingerprint already computed unless the volatile parameters change."""
        new = object.__new__(type(self))
        fields = new.__dict__
        fields.update(self.__dict__)
        fields["controls"] = {**self.controls, **controls}
        if "volatile" in controls:
            fields.pop("key", None)
        return new

    def __repr__(self) -> str:
        controls = {k: ("***" if k in SECRET_CONTROLS else v) for k, v in self.controls.items()}
        return (
            f"ChatRequest(model={self.model!r}, messages={self.messages!r}, params={self.params!r}, "
            f"stream={self.stream!r}, metadata={self.metadata!r}, controls={controls!r})"
        )

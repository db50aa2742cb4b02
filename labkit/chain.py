"""The layer chain: one interface for every remedy, assembled in one place.

Like middleware in Starlette or a Layer in Rust's Tower, a layer receives the request and the next
handler and returns a result: a whole `ChatCompletion` or a `ChunkStream`. A lesson switches exactly one
layer on and measures the difference. Layers never import each other; `Chain` is the only thing that
knows their order (outermost first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from openai.types.chat import ChatCompletion

from labkit.request import ChatRequest
from labkit.stream import ChunkStream

Result = ChatCompletion | ChunkStream
Handler = Callable[[ChatRequest], Awaitable[Result]]


@runtime_checkable
class Layer(Protocol):
    """What every layer implements: called with the request and the handler below, it returns an awaitable result.

    Usually an `async def`. A layer that leaves most requests alone (the stream guard and the upstream tap, on a
    plain request) may be a plain method that returns `call_next(request)` for those: no coroutine of its own, one
    frame less on every such request."""

    def __call__(self, request: ChatRequest, call_next: Handler) -> Awaitable[Result]: ...


class _Bound:
    """A layer bound to the handler below it: calling it returns the layer's own coroutine.

    Not a coroutine of its own: an `async def` wrapper added one more coroutine per layer to every request."""

    __slots__ = ("call_next", "layer")

    def __init__(self, layer: Layer, call_next: Handler) -> None:
        self.layer = layer
        self.call_next = call_next

    def __call__(self, request: ChatRequest) -> Awaitable[Result]:
        return self.layer(request, self.call_next)

    def __repr__(self) -> str:
        return f"<{type(self.layer).__name__}.handler>"


def _bind(layer: Layer, call_next: Handler) -> Handler:
    return _Bound(layer, call_next)


class Chain:
    """A transport wrapped by layers, outermost first: `Chain(transport, [metrics, cache, retry])`."""

    def __init__(self, transport: Handler, layers: Sequence[Layer] = ()) -> None:
        self.transport = transport
        self.layers: tuple[Layer, ...] = tuple(layers)
        handler: Handler = transport
        for layer in reversed(self.layers):
            handler = _bind(layer, handler)
        self._handler = handler

    def __call__(self, request: ChatRequest) -> Awaitable[Result]:
        """The outermost layer's coroutine (await it, or make it a task). Not a coroutine of its own: a chain used as
        a handler (each endpoint's, under the balancer) would add one more frame to every request."""
        return self._handler(request)

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        model: str,
        metadata: Mapping[str, Any] | None = None,
        controls: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatCompletion:
        """A plain (non-streamed) completion through the chain."""
        request = ChatRequest.create(model, messages, metadata=metadata, controls=controls, **params)
        result = await self(request)
        if isinstance(result, ChunkStream):  # a layer may answer a plain request from a recorded stream
            return await result.collect()
        return result

    async def stream(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        model: str,
        metadata: Mapping[str, Any] | None = None,
        controls: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChunkStream:
        """A streamed completion through the chain; use it as `async with await chain.stream(...) as s`."""
        request = ChatRequest.create(model, messages, stream=True, metadata=metadata, controls=controls, **params)
        result = await self(request)
        if isinstance(result, ChatCompletion):
            raise TypeError("a layer answered a streamed request with a whole completion")
        return result

    def __repr__(self) -> str:
        names = " -> ".join([*(type(layer).__name__ for layer in self.layers), type(self.transport).__name__])
        return f"Chain({names})"

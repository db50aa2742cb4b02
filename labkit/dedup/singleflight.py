"""In-flight coalescing ("single-flight") as a chain layer.

When identical requests of one scope (same tenant and fingerprint: `labkit.scope.Scope`) are in flight at the
same time, one goes upstream and every caller gets its result. Two tenants never share a flight, so one tenant's
401 or quota error cannot reach another.

- A plain call runs in its first caller's own frame (the leader), as `RedisSingleFlight` runs it across processes:
  a task of its own per call made every cache miss through the default chain pay a task and two more turns of the
  event loop (`python -m labkit.lessons.overhead --bench`), for the one case where the leader leaves first.
  When it does, its call is cancelled with it and a waiting caller sends it again (`stats.restarts`): the others
  never see the leader's cancellation. A waiter that leaves changes nothing for anybody else.
- A stream is fanned out from a task of its own, which no caller owns: every waiter reads the same upstream chunks
  from the first one on (a late joiner gets the chunks so far replayed, then the live ones); a reader that closes
  early leaves, and the upstream stream is cancelled only when the last reader has left.
- An upstream error reaches every waiter, and the flight is forgotten at once: the next request goes upstream
  again (no negative caching).

A flight lives only while its request is in flight; remembering answers afterwards is a cache's job (lesson 06).
Plain and streamed requests are coalesced separately (a streaming caller wants its chunks as they come).
Coalesced callers share chunk objects (treat them as read-only); plain completions are copied per coalesced
caller (`copy_results`), so one caller editing its answer cannot change another's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from labkit.chain import Handler, Result
from labkit.dedup.policy import SamplingPolicy
from labkit.request import ChatRequest
from labkit.scope import Scoping, copy_served
from labkit.stream import ChunkStream


@dataclasses.dataclass
class SingleFlightStats:
    """What the layer did: `upstream_calls + coalesced + bypassed == requests`.

    `restarts` counts waiters whose leader left before the answer: each then sent the call itself or joined the
    waiter that did (counted there, not in `coalesced`)."""

    requests: int = 0
    upstream_calls: int = 0
    coalesced: int = 0
    bypassed: int = 0
    upstream_errors: int = 0
    upstream_cancelled: int = 0
    restarts: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def reset(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, 0)


class _Seat:
    """One caller waiting on a flight; leaving twice is leaving once."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = False


_LEADER_LEFT = object()  # what a plain flight's waiters get when its leader was cancelled: send it again


class _Flight:
    """One upstream call and everything its waiters share."""

    def __init__(self, key: str, stream: bool) -> None:
        self.key = key
        self.stream = stream
        self.seats = 0
        self.task: asyncio.Task[Any] | None = None  # streams only: a plain call runs in its leader's frame
        # plain only: one future per waiter (not the leader), resolved by the leader when the call ends (a waiter
        # that leaves cancels its own future only)
        self.waiters: list[asyncio.Future[Any]] = []
        # streams only
        if stream:
            self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.info: dict[str, Any] = {}
            self.chunks: list[ChatCompletionChunk] = []
            self.done = False
            self.error: BaseException | None = None
            self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


class SingleFlight:
    """Coalesce identical in-flight requests into one upstream call (plain or streamed).

    `policy` decides what happens to sampled requests (temperature > 0, the API default). Requests share a flight
    when they have the same scope under `scoping` (default: tenant and namespace from the request's controls,
    else "public"; `build_chain` passes its endpoints' tenant); `key` replaces that rule with another one that
    must still separate tenants (the cache's stampede protection passes its cache key).
    """

    def __init__(
        self,
        policy: SamplingPolicy | None = None,
        *,
        key: Callable[[ChatRequest], str] | None = None,
        scoping: Scoping | None = None,
        copy_results: bool = True,
    ) -> None:
        self.policy = policy or SamplingPolicy()
        self.scoping = scoping if scoping is not None else Scoping()
        self.key: Callable[[ChatRequest], str] = key if key is not None else self.scope_key
        self.copy_results = copy_results
        self.stats = SingleFlightStats()
        self._flights: dict[str, _Flight] = {}

    def scope_key(self, request: ChatRequest) -> str:
        """The request's scope (`labkit.scope.Scope`) as a key: tenant, namespace, model and fingerprint."""
        return self.scoping.of(request).key("f")

    @property
    def in_flight(self) -> int:
        """How many distinct upstream calls are running now."""
        return len(self._flights)

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.stats.requests += 1
        slots = self.policy.slots(request)
        if slots == 0:
            self.stats.bypassed += 1
            return await call_next(request)
        if request.stream:
            key, flight = self._pick(f"s:{self.key(request)}", slots)
            leader = flight is None
            if flight is None:
                flight = self._start_stream(key, request, call_next)
            else:
                self.stats.coalesced += 1
            return await self._join_stream(flight, leader)
        base = f"p:{self.key(request)}"
        while True:
            key, flight = self._pick(base, slots)
            if flight is None:
                return await self._lead(key, request, call_next)
            self.stats.coalesced += 1
            result = await self._wait(flight)
            if result is not _LEADER_LEFT:
                break
            self.stats.coalesced -= 1
            self.stats.restarts += 1
        if not self.copy_results:
            return result  # type: ignore[no-any-return]
        copied = _copy(result)
        copy_served(result, copied)  # which model served it (a balancer's fallback) travels with the copy
        return copied

    # -- flights -------------------------------------------------------------------------------------------

    def _pick(self, base: str, slots: int) -> tuple[str, _Flight | None]:
        """A free slot for a new upstream call, else the running flight with the fewest waiters."""
        if slots == 1:
            return base, self._flights.get(base)
        busiest: tuple[str, _Flight] | None = None
        for i in range(slots):
            key = f"{base}#{i}"
            flight = self._flights.get(key)
            if flight is None:
                return key, None
            if busiest is None or flight.seats < busiest[1].seats:
                busiest = (key, flight)
        assert busiest is not None
        return busiest

    def _open(self, key: str, stream: bool) -> _Flight:
        flight = self._flights[key] = _Flight(key, stream)
        self.stats.upstream_calls += 1
        return flight

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def _leave(self, flight: _Flight, seat: _Seat) -> None:
        if seat.left:
            return
        seat.left = True
        flight.seats -= 1
        if flight.seats == 0 and flight.task is not None and not flight.task.done():
            self._forget(flight)  # nobody may join a flight that is being cancelled
            flight.task.cancel()

    # -- plain requests ------------------------------------------------------------------------------------

    async def _lead(self, key: str, request: ChatRequest, call_next: Handler) -> ChatCompletion:
        """Make the call in this caller's frame and hand its outcome to every waiter still there.

        Each waiter awaits a future of its own, set here: `asyncio.shield` over a shared one did the same job with
        two more callbacks, and so two more turns of the event loop, per request."""
        flight = self._open(key, stream=False)
        flight.seats = 1
        try:
            answer = await call_next(request)
            result = await answer.collect() if isinstance(answer, ChunkStream) else answer  # a recorded stream
        except asyncio.CancelledError:
            self.stats.upstream_cancelled += 1
            self._settle(flight, _LEADER_LEFT, None)  # the waiters still there send it again
            raise
        except BaseException as failure:
            self.stats.upstream_errors += 1
            self._settle(flight, None, failure)
            raise
        self._settle(flight, result, None)
        return result

    def _settle(self, flight: _Flight, result: Any, error: BaseException | None) -> None:
        self._forget(flight)
        for waiter in flight.waiters:
            if waiter.done():  # its caller left
                continue
            if error is None:
                waiter.set_result(result)
            else:
                waiter.set_exception(error)
                waiter.exception()  # retrieved: a waiter cancelled meanwhile need not see it

    @staticmethod
    async def _wait(flight: _Flight) -> Any:
        """A seat on a plain flight until its leader settles it: the answer, or `_LEADER_LEFT`."""
        flight.seats += 1
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        flight.waiters.append(waiter)
        try:
            return await waiter
        finally:
            flight.seats -= 1

    # -- streams -------------------------------------------------------------------------------------------

    def _start_stream(self, key: str, request: ChatRequest, call_next: Handler) -> _Flight:
        flight = self._open(key, stream=True)
        run = self._run_stream(flight, request, call_next)
        flight.task = asyncio.create_task(run, name=f"single-flight {key[:14]}")
        return flight

    async def _run_stream(self, flight: _Flight, request: ChatRequest, call_next: Handler) -> None:
        upstream: ChunkStream | None = None
        try:
            result = await call_next(request)
            if not isinstance(result, ChunkStream):
                raise TypeError("a layer below single-flight answered a streamed request with a whole completion")
            upstream = result
            flight.info = dict(result.info)
            flight.opened.set_result(None)
            async for chunk in upstream:
                flight.chunks.append(chunk)
                flight.notify()
        except asyncio.CancelledError as error:
            self.stats.upstream_cancelled += 1
            self._fail(flight, error)
            raise
        except BaseException as error:  # handed to every waiter; the task itself ends quietly
            self.stats.upstream_errors += 1
            self._fail(flight, error)
        finally:
            self._forget(flight)
            flight.done = True
            flight.notify()
            if upstream is not None:
                await upstream.aclose()

    @staticmethod
    def _fail(flight: _Flight, error: BaseException) -> None:
        flight.error = error
        if not flight.opened.done():
            if isinstance(error, asyncio.CancelledError):
                flight.opened.cancel()
            else:
                flight.opened.set_exception(error)
                flight.opened.exception()  # retrieved: waiters that left need not see it

    async def _join_stream(self, flight: _Flight, leader: bool) -> ChunkStream:
        seat = _Seat()
        flight.seats += 1
        try:
            await asyncio.shield(flight.opened)  # open errors (400, 429 ...) raise here, as from the transport
        except BaseException:
            self._leave(flight, seat)
            raise
        info = dict(flight.info)
        info["dedup"] = "leader" if leader else "follower"
        if not leader:
            info["source"] = "coalesced"

        async def close() -> None:
            self._leave(flight, seat)

        return ChunkStream(self._follow(flight, seat), close=close, info=info)

    async def _follow(self, flight: _Flight, seat: _Seat) -> AsyncIterator[ChatCompletionChunk]:
        i = 0
        try:
            while True:
                while i < len(flight.chunks):
                    yield flight.chunks[i]
                    i += 1
                if flight.done:
                    if flight.error is not None:
                        raise flight.error
                    return
                await flight.changed()
        finally:
            self._leave(flight, seat)


def _copy(completion: ChatCompletion) -> ChatCompletion:
    """An independent copy (a round trip through plain data: about 4x cheaper than `model_copy(deep=True)`)."""
    return type(completion).model_validate(completion.model_dump(mode="python", warnings=False))


__all__ = ["SingleFlight", "SingleFlightStats"]

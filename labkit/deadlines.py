"""Many per-request deadlines on one event-loop timer: what the retry layer's deadline and the hedge's delay use.

Every request through the default chain sets two timers (the retry layer's 8 s deadline, the hedge's delay) and
almost always cancels both. With `loop.call_at` each is a `TimerHandle`, pushed onto the loop's heap with a
comparison written in Python and left there, cancelled, until it reaches the top or the heap is compacted: with
8 s deadlines the heap held thousands of them, and setting and cancelling the two timers was a large share of
the two layers' client CPU per request (`python -m labkit.lessons.overhead --bench --layers`). asyncio has no
cheaper timer and no library offers one for asyncio, so this module keeps a layer's deadlines in a heap of its own
(tuples, compared in C) and arms one loop timer for the earliest; a cancelled deadline is a flag, dropped when it
reaches the top or when cancelled ones outnumber the live ones.

A `Deadlines` belongs to one layer and to the event loop it is first used on; used on another loop (a notebook
that runs `asyncio.run` twice) it starts afresh there, dropping the deadlines of the loop before.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

__all__ = ["Deadline", "Deadlines"]

#: Cancelled deadlines left in the heap before it is compacted (and only when they outnumber the live ones).
COMPACT_AFTER = 256


class Deadline:
    """One callback due at a time; `cancel()` withdraws it (cancelling a deadline that already ran does nothing)."""

    __slots__ = ("_owner", "callback")

    def __init__(self, owner: Deadlines, callback: Callable[[], object]) -> None:
        self._owner = owner
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self._owner._cancelled_one()


class Deadlines:
    """A heap of deadlines served by one `loop.call_at` timer, set for the earliest (see the module docstring)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties in time run in the order they were set
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def call_at(self, when: float, callback: Callable[[], object]) -> Deadline:
        """Run `callback` at loop time `when` (as `loop.call_at`), unless the returned deadline is cancelled first."""
        return self._push(asyncio.get_running_loop(), when, callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        """Run `callback` in `delay` seconds (as `loop.call_later`)."""
        loop = asyncio.get_running_loop()
        return self._push(loop, loop.time() + delay, callback)

    def _push(self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], object]) -> Deadline:
        if loop is not self._loop:
            self._rebind(loop)
        deadline = Deadline(self, callback)
        heapq.heappush(self._heap, (when, next(self._order), deadline))
        if when < self._armed_at:
            self._arm(loop, when)
        return deadline

    def __len__(self) -> int:
        """Deadlines set and neither run nor cancelled."""
        return len(self._heap) - self._cancelled

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._heap, self._cancelled, self._timer, self._armed_at = loop, [], 0, None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._armed_at = when

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > COMPACT_AFTER and 2 * self._cancelled > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _fire(self) -> None:
        """Run every deadline that is due; drop cancelled ones on the way; arm the timer for the next live one."""
        loop = self._loop
        assert loop is not None
        due = max(loop.time(), self._armed_at)  # the loop runs a timer up to its clock's resolution early
        self._timer, self._armed_at = None, math.inf
        while self._heap:  # read anew each turn: a callback may cancel a deadline, and the heap be compacted
            when, _, deadline = self._heap[0]
            callback = deadline.callback
            if callback is not None and when > due:
                break
            heapq.heappop(self._heap)
            if callback is None:
                self._cancelled -= 1
                continue
            deadline.callback = None
            try:
                callback()
            except Exception as error:  # one failing callback must not keep the others from running
                loop.call_exception_handler({"message": "a deadline's callback failed", "exception": error})
        if self._heap and self._heap[0][0] < self._armed_at:  # a callback may have armed it for a later deadline
            self._arm(loop, self._heap[0][0])

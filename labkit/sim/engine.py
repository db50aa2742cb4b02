"""The latency model: a simulated inference server with a finite number of concurrent sequences.

A real server admits at most `max_sequences` sequences; further requests wait in a FIFO queue. Once
admitted, the first token comes after the base TTFT plus the prefill of the prompt tokens not found in
the prefix cache; then tokens follow at an inter-token latency that grows as more sequences share the
server: itl = base_itl * (1 + decode_slowdown * active / max_sequences).

Tokens are paced against absolute deadlines on the loop clock (next_deadline += itl) instead of
`asyncio.sleep(itl)` per token, which would add the event loop's lag to every interval. When the loop
falls behind, all tokens already due are released together so the stream catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from labkit.sim import errors
from labkit.sim.config import Profile


class Engine:
    """Sequence slots, FIFO queue and token pacing of one simulated server."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.max_sequences = max(1, profile.max_sequences)
        self.max_queue = profile.max_queue
        self.base_itl = 1.0 / profile.output_tokens_per_s
        self._slow = profile.decode_slowdown / self.max_sequences
        self.active = 0
        self.peak_active = 0
        self.tokens_generated = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def reset_counters(self) -> None:
        self.peak_active = self.active
        self.tokens_generated = 0

    async def acquire(self) -> bool:
        """Take a sequence slot, waiting in FIFO order if all are busy. Returns whether it had to wait.

        Raises a 503 APIError when the queue is bounded and full. A waiter cancelled (client gone)
        leaves the queue, or hands its slot on if it was granted one at that moment."""
        if self.active < self.max_sequences and not self._waiters:
            self.active += 1
            if self.active > self.peak_active:
                self.peak_active = self.active
            return False
        if self.max_queue is not None and len(self._waiters) >= self.max_queue:
            raise errors.service_unavailable()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was ours already: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        return True

    def release(self) -> None:
        """Free a slot: hand it straight to the oldest waiter, if any."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1

    def first_token_delay(self, uncached_prompt_tokens: int) -> float:
        """Seconds from admission to the first token: base TTFT plus prefill of the uncached prompt."""
        prefill = self.profile.prefill_tokens_per_s
        return self.profile.ttft_s + (uncached_prompt_tokens / prefill if prefill else 0.0)

    def itl(self) -> float:
        """Current inter-token latency: slower the more sequences are active."""
        return self.base_itl * (1.0 + self._slow * self.active)

    async def pace(self, n: int, first_at: float, coalesce_s: float = 0.0) -> AsyncIterator[int]:
        """Yield how many of the `n` tokens are due, as they fall due (the first at loop time `first_at`).

        Tokens already overdue are released together. `coalesce_s` > 0 also groups tokens due within that
        window and releases them when the last of them is due (never early): a non-streaming response
        needs no wake-up per token. Each yield releases at least one token."""
        loop = asyncio.get_running_loop()
        deadline = first_at
        sent = 0
        late_streak = 0
        while sent < n:
            itl = self.itl()
            now = loop.time()
            last = deadline
            due = 1
            horizon = max(now, deadline + coalesce_s)
            while sent + due < n and last + itl <= horizon:
                last += itl
                due += 1
            if last > now:
                await asyncio.sleep(last - now)
                late_streak = 0
            else:
                late_streak += 1
                if late_streak >= 4:  # behind schedule: still let other streams run now and then
                    await asyncio.sleep(0)
                    late_streak = 0
            deadline = last + itl
            sent += due
            self.tokens_generated += due
            yield due

"""Where one request's time goes: a per-request log of checkpoints that any layer may write to.

Layers never import each other (docs/ARCHITECTURE.md), yet a breakdown needs the cache, the admission queue and the
transport to say when they were done. So the log travels in a `contextvars.ContextVar`, not in an import: the
metrics layer opens a `StageLog` for each request and sets it as the current one; anything below it in the same
task (or in a task started from it, which copies the context) calls `labkit.timing.mark("cache_lookup")` when
its stage ends. With no log open, `mark()` does nothing, so a layer can call it unconditionally.

A checkpoint closes the stage named after it: the stage lasts from the previous checkpoint (or the request's
start) to this one. The stages therefore tile the request's time exactly and add up to its total. The first
checkpoint of a name wins: a retried attempt's second connect does not move the first one (the wait between
attempts lands in the stage that was running, which is where the caller felt it).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

__all__ = ["StageLog", "current", "mark", "opened"]


class StageLog:
    """Checkpoints `(name, perf_counter time)` of one request, in the order they were reached."""

    __slots__ = ("marks", "started")

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str, at: float | None = None) -> None:
        """Close the stage `name` now (or at `at`); a name already marked is kept as it was."""
        for existing, _ in self.marks:
            if existing == name:
                return
        self.marks.append((name, time.perf_counter() if at is None else at))

    def reached(self, name: str) -> bool:
        return any(existing == name for existing, _ in self.marks)

    def stages(self) -> dict[str, float]:
        """Seconds per stage, in time order; they add up to the time of the last checkpoint."""
        if len(self.marks) == 1:  # a plain request through the default chain: its one "response" stage
            name, at = self.marks[0]
            return {name: max(0.0, at - self.started)}
        out: dict[str, float] = {}
        previous = self.started
        for name, at in sorted(self.marks, key=lambda m: m[1]):
            out[name] = max(0.0, at - previous)
            previous = max(previous, at)
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in self.stages().items())
        return f"StageLog({inner})"


_current: ContextVar[StageLog | None] = ContextVar("labkit_stage_log", default=None)


def current() -> StageLog | None:
    """The log of the request being handled in this context, if a metrics layer opened one."""
    return _current.get()


def mark(name: str) -> None:
    """Close stage `name` of the current request now; a no-op when no log is open."""
    log = _current.get()
    if log is not None:
        log.mark(name)


class opened:  # lower case: it reads as the function it replaced, `with opened(log):`
    """Make `log` the current one for the code inside (and tasks it starts).

    A class, not a `contextlib.contextmanager`: the metrics layer opens one per request, and a generator-based
    manager costs a generator and two resumptions of it to enter and leave."""

    __slots__ = ("_log", "_token")

    def __init__(self, log: StageLog) -> None:
        self._log = log

    def __enter__(self) -> StageLog:
        self._token = _current.set(self._log)
        return self._log

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)

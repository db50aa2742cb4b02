"""Measuring a load run from the client's side: its CPU, the server's, the machine's, and the latencies.

Shared by the benchmark's load client (`labkit.lessons.bench.client`, a process of its own) and the pooling
lesson's measurements (`labkit.lessons.pooling`, in the notebook's process). CPU is read at the two instants
that bound the measured phase, for this process (`resource.getrusage`), for the server (`psutil`, by pid) and
for the whole machine, so every figure covers the same interval and a busy machine shows up as `other_cpu`.
`closed_loop` is the one closed-loop load generator: a fixed number of workers, each sending its next call as
soon as its last one ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from labkit.percentiles import percentile

T = TypeVar("T")


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (2000 sockets need more than 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds() -> float:
    """User plus system CPU time of this process, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/min/max/mean of `values` (seconds) in milliseconds, rounded to 0.1 ms."""

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000.0, 1)

    return {
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "p99": ms(percentile(values, 99)),
        "min": ms(min(values)) if values else None,
        "max": ms(max(values)) if values else None,
        "mean": ms(sum(values) / len(values)) if values else None,
    }


class ServerCpu:
    """Reads the server process's CPU time by pid (psutil), or nothing when no pid was given."""

    def __init__(self, pid: int | None) -> None:
        self._proc: Any = None
        if pid:
            import psutil

            with contextlib.suppress(Exception):
                self._proc = psutil.Process(pid)

    def read(self) -> float | None:
        if self._proc is None:
            return None
        try:
            times = self._proc.cpu_times()
        except Exception:
            return None
        return float(times.user + times.system)


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine spent busy (all cores, every process), or None without psutil."""
    try:
        import psutil

        t = psutil.cpu_times()
    except Exception:
        return None
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already counted in user and nice
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - guest)


def other_cpu(busy0: float | None, busy1: float | None, client: float, server: float | None) -> float | None:
    """CPU that other processes used during the measurement: non-zero means the machine was not quiet."""
    if busy0 is None or busy1 is None or server is None:
        return None
    return round(max(0.0, busy1 - busy0 - client - server), 3)


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> tuple[T, str]:
    """Run `main` on uvloop when it is installed (it is in the lab's requirements); say which loop ran."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main), "asyncio"
    return uvloop.run(main), "uvloop"


async def closed_loop(
    call: Callable[[], Awaitable[Any]], *, requests: int, concurrency: int, error_name: Callable[[BaseException], str]
) -> tuple[list[float], Counter[str]]:
    """`requests` calls from `concurrency` workers, each sending its next call when its last one ends.

    Returns the latency (s) of every call that succeeded and the failures counted by `error_name`: a failure
    is a measured outcome (an overloaded pool's timeouts, say), never the end of the run.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors[error_name(exc)] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


__all__ = [
    "ServerCpu",
    "closed_loop",
    "cpu_seconds",
    "machine_busy_seconds",
    "other_cpu",
    "raise_nofile_limit",
    "run_on_fast_loop",
    "summary_ms",
]

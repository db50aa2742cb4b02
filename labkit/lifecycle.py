"""Run a server process until SIGTERM/SIGINT or until its parent is gone.

The simulated service and the web chat are both started as child processes (labkit.lab.services); each prints a
ready line and must not outlive a crashed notebook kernel or test run. One helper so both behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable


def _alive(pid: int, original_ppid: int) -> bool:
    if pid == original_ppid and os.getppid() != pid:
        return False  # we were re-parented: our parent died
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def watch_parent(pid: int, stop: asyncio.Event) -> None:
    """Set `stop` once process `pid` is gone (or we were re-parented away from it); checks every second."""
    original_ppid = os.getppid()
    while not stop.is_set():
        if not _alive(pid, original_ppid):
            stop.set()
            return
        await asyncio.sleep(1.0)


async def serve_until_stopped(ready_line: str, cleanup: Callable[[], Awaitable[None]], parent_pid: int | None) -> None:
    """Print `ready_line`, then wait for a signal or the parent's death, then run `cleanup`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(watch_parent(parent_pid, stop)) if parent_pid else None
    sys.stdout.write(ready_line + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await cleanup()

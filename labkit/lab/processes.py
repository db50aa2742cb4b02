"""Supervising the lab's servers as child processes: none outlives the notebook, none is left half-started.

Each server runs as a real child process on a free loopback port, so what a lesson measures crosses a real
socket and none of its CPU is charged to the notebook kernel. No child outlives its parent: on Linux each child
gets ``PR_SET_PDEATHSIG`` (SIGTERM when the parent dies, even by SIGKILL), the simulated service also watches
``--parent-pid``, and an ``atexit`` hook stops whatever is still running at a normal exit. Children run in their
own session, so a notebook interrupt (SIGINT to the kernel's process group) does not reach them.

`Service` is what every server the lab talks to has in common (one labkit started, or one found through the
environment, which labkit never stops); `RestartableService` is a local one a lesson may restart.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import labkit

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 25


class ServiceError(RuntimeError):
    """A service could not be started (or cannot be started here); the message says why and what to do."""


# --------------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago; servers that cannot take port 0 bind it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send the child SIGTERM when its parent dies.

    Linux delivers the signal when the *thread* that forked the child exits, so it is only armed when we
    start from the main thread (a notebook cell, a pytest fixture); from a worker thread the child would die
    with that thread. Everything is resolved before the fork: the child only makes one system call.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class _Output:
    """A child's stdout or stderr in an anonymous file: no pipe to drain, nothing left on disk if we die."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (open for the life of the child)

    def tail(self, lines: int = _TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
        """The last ``lines`` lines. ``pread`` leaves the file offset, which the child shares, alone."""
        if self.file.closed:
            return ""
        fd = self.file.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        text = os.pread(fd, size - start, start).decode(errors="replace")
        return "\n".join(text.rstrip().splitlines()[-lines:])


class Child:
    """One child process in its own session, armed to die with us, its output kept for error messages."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout, self.stderr = _Output(), _Output()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self.stdout.file,
                stderr=self.stderr.file,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as error:
            self._close_outputs()
            raise ServiceError(f"{name} could not be run: {error}") from error

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, probe: Callable[[], Any], timeout: float) -> Any:
        """Poll ``probe`` until it returns a truthy value. On failure, raise with the output's tail and stop."""
        deadline = time.monotonic() + timeout
        try:
            while not (result := probe()):
                if self.proc.poll() is not None:
                    raise self.failure(f"exited with code {self.proc.returncode} before it was ready")
                if time.monotonic() > deadline:
                    raise self.failure(f"was not ready after {timeout:g} s")
                time.sleep(0.02)
        except BaseException:  # also Ctrl-C while waiting: never leave a half-started server behind
            self.stop(grace=1.0)
            raise
        return result

    def failure(self, what: str) -> ServiceError:
        parts = [f"{self.name} {what}.", f"command: {subprocess.list2cmdline(self.argv)}"]
        for label, output in (("stderr", self.stderr), ("stdout", self.stdout)):
            if text := output.tail():
                parts.append(f"--- {label} (last lines) ---\n{text}")
        if len(parts) == 2:
            parts.append("(it wrote nothing to stdout or stderr)")
        return ServiceError("\n".join(parts))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_outputs()

    def _close_outputs(self) -> None:
        self.stdout.file.close()
        self.stderr.file.close()


def ask(host: str, port: int, request: bytes, expect: bytes) -> bool:
    """One request/response over a fresh TCP connection: readiness needs no client library."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(request)
            return sock.recv(256).startswith(expect)
    except OSError:
        return False


def child_env() -> dict[str, str]:
    """The environment for ``python -m labkit.sim``: this labkit importable from any working directory."""
    env = dict(os.environ)
    root = str(Path(labkit.__file__).resolve().parent.parent)  # the folder that holds the labkit package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------------------

_LIVE: set[Service] = set()
_LIVE_LOCK = threading.Lock()


class Stoppable:
    """`with` and `async with` stop it at the end: what a server and the lab that holds several have in common."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)  # the grace period must not block the event loop


@dataclass(eq=False, repr=False)
class Service(Stoppable):
    """A server the lab talks to: one labkit started (``managed``) or one found through the environment."""

    name: str
    url: str
    _child: Child | None = field(default=None, init=False)
    _owner_pid: int = field(default_factory=os.getpid, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def managed(self) -> bool:
        """True if labkit started this server (and so will stop it)."""
        return self._child is not None

    @property
    def pid(self) -> int | None:
        """The server's process id; None for a server labkit did not start."""
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (always True for a server labkit did not start)."""
        return self._child is None or self._child.proc.poll() is None

    def logs(self) -> str:
        """The last lines the server wrote to stderr and stdout, for when something looks wrong."""
        if self._child is None:
            return ""
        return "\n".join(t for t in (self._child.stderr.tail(), self._child.stdout.tail()) if t)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``grace`` s). Idempotent; a no-op for external servers."""
        with self._lock:
            if self._child is not None and os.getpid() == self._owner_pid:
                self._child.stop(grace)
        _forget(self)

    def _adopt(self, child: Child) -> None:
        self._child = child
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __repr__(self) -> str:
        where = f"pid={self.pid}" if self.managed else "external"
        state = "" if self.running else ", stopped"
        return f"<{type(self).__name__} {self.name} {self.url} ({where}{state})>"


def _forget(service: Service) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(service)


@atexit.register
def _stop_all() -> None:
    """Stop every server still running when the interpreter exits normally."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for service in live:
        with contextlib.suppress(Exception):
            service.stop(grace=2.0)


@dataclass(eq=False, repr=False)
class RestartableService(Service):
    """A local server that a lesson can stop and start again on the same port (to show fail-open)."""

    host: str = LOOPBACK
    port: int = 0
    _start_timeout: float = field(default=10.0, init=False)

    def restart(self, timeout: float | None = None) -> None:
        """Stop the server if it runs, and start it again on the same port, empty."""
        if not self.managed:
            raise ServiceError(f"{self.name} at {self.url} was not started by labkit; it cannot restart it.")
        self.stop()
        self._adopt(self._spawn(timeout or self._start_timeout))

    def _spawn(self, timeout: float) -> Child:
        raise NotImplementedError


__all__ = [
    "LOOPBACK",
    "Child",
    "RestartableService",
    "Service",
    "ServiceError",
    "Stoppable",
    "ask",
    "child_env",
    "free_port",
]

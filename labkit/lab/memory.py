"""How much memory the lab takes: the summed resident memory of a notebook's kernel and every process it starts.

A Binder session has 1-2 GB for everything, so each notebook at learner defaults is held to a budget
(`BUDGET_MB`) and the report (`labkit.lab.report`) records each notebook's peak. `PeakMemory` samples while a
notebook runs: every ``interval`` seconds it sums the RSS of the processes started under this one since sampling
began (the notebook's kernel) and all their descendants (the simulated services, Redis, Memcached, workers the
lab starts are the kernel's children). Summed RSS counts pages that processes share (the interpreter, a
tokenizer's tables mapped from the same file) once per process, so it overstates what the machine holds: a
conservative figure for a budget.

``python -m labkit.lab.memory sim`` prints a simulated service's resident memory after start-up;
``python -m labkit.lab.memory tokens`` what a fresh interpreter holds after loading a tokenizer, through
bpe-openai's Python wrapper and through `labkit.tokens`; ``python -m labkit.lab.memory sampler`` what one sample
costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

BUDGET_MB = 1200
"""Summed resident memory a notebook may use at learner defaults: Binder gives a session 1-2 GB."""

MB = 1024 * 1024


def process_label(pid: int) -> str:
    """A short name for a process: the module of ``python -m x``, ``kernel`` for an IPython kernel, else its
    executable."""
    argv = _cmdline(pid)
    if not argv:
        return "?"
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return "kernel" if module.startswith("ipykernel") else module
    if any("ipykernel" in a for a in argv[:3]):
        return "kernel"
    return os.path.basename(argv[0].split()[0])  # redis-server rewrites its argv into "redis-server host:port"


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).cmdline()
    except Exception:
        return []


@dataclass
class Peak:
    """The largest summed RSS seen, and what each process held at that moment."""

    peak_mb: float = 0.0
    at_peak: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    interval_s: float = 0.2
    budget_mb: int = BUDGET_MB

    @property
    def over_budget(self) -> bool:
        return self.peak_mb > self.budget_mb

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_mb": round(self.peak_mb, 1),
            "budget_mb": self.budget_mb,
            "over_budget": self.over_budget,
            "samples": self.samples,
            "interval_s": self.interval_s,
            "at_peak": self.at_peak,
        }


class PeakMemory:
    """Samples, in a thread, the summed RSS of the processes started under ``root`` (default: this process)
    while the ``with`` block runs, and their descendants; processes that were already its children are left out
    (a test's own servers, say). ``peak`` holds the result.

    Cheap on Linux: a sample lists ``/proc``, reads the parent of each process it has not seen before, and one
    ``statm`` per counted process (`python -m labkit.lab.memory sampler` measures its CPU per sample). Elsewhere
    it asks psutil, which reads every process each time.
    """

    def __init__(self, interval_s: float = 0.2, root: int | None = None, budget_mb: int = BUDGET_MB) -> None:
        self._root = root or os.getpid()
        self._proc = os.path.isdir(f"/proc/{self._root}")
        self._parent: dict[int, int] = {}  # pid -> parent pid, for every process seen (Linux)
        self._excluded: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = Peak(interval_s=interval_s, budget_mb=budget_mb)

    def __enter__(self) -> PeakMemory:
        self._excluded = set(self._children_now())
        self._thread = threading.Thread(target=self._run, name="labkit-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # whatever is still running at the end

    def _run(self) -> None:
        while not self._stop.wait(self.peak.interval_s):
            self.sample()

    def _children_now(self) -> list[int]:
        if not self._proc:
            import psutil

            return [c.pid for c in psutil.Process(self._root).children()]
        self._refresh()
        return [pid for pid, parent in self._parent.items() if parent == self._root]

    def _refresh(self) -> None:
        """Learn the parent of every process not seen before; forget those that are gone."""
        alive = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for gone in self._parent.keys() - alive:
            del self._parent[gone]
        for pid in alive - self._parent.keys():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                self._parent[pid] = int(stat[stat.rindex(b")") + 2 :].split()[1])  # the name may hold spaces
            except (OSError, ValueError):  # it exited meanwhile
                continue

    def processes(self) -> list[int]:
        """The pids counted now: the root's new children and all their descendants."""
        if not self._proc:
            import psutil

            found = []
            for child in psutil.Process(self._root).children():
                if child.pid not in self._excluded:
                    with contextlib.suppress(psutil.Error):
                        found += [child.pid, *(d.pid for d in child.children(recursive=True))]
            return found
        self._refresh()
        children: dict[int, list[int]] = {}
        for pid, parent in self._parent.items():
            children.setdefault(parent, []).append(pid)
        found, todo = [], [c for c in children.get(self._root, []) if c not in self._excluded]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def _rss(self, pid: int) -> int | None:
        if self._proc:
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    return int(f.read().split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                return None
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None

    def sample(self) -> float:
        """One sample: the summed RSS in MB now (the peak and its breakdown are updated when it is a new high)."""
        rss = [(pid, r) for pid in self.processes() if (r := self._rss(pid)) is not None]
        total = sum(r for _, r in rss) / MB
        self.peak.samples += 1
        if total > self.peak.peak_mb:
            self.peak.peak_mb = total
            self.peak.at_peak = [
                {"process": process_label(pid), "pid": pid, "rss_mb": round(r / MB, 1)}
                for pid, r in sorted(rss, key=lambda pr: -pr[1])
            ]
        return total


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB."""
    import psutil

    return psutil.Process(pid).memory_info().rss / MB


# -- measurements behind the figures in the docs ------------------------------------------------------------

_TOKENIZER_WAYS = {
    "bare interpreter": "",
    "bpe_openai wrapper, o200k encoding": "import bpe_openai; bpe_openai.encoding_for_model('gpt-4o').encode('hi')",
    "labkit.tokens, o200k encoding": "from labkit.tokens import count_text; count_text('hi', 'gpt-4o')",
}
_RSS_LINE = "import psutil; print(psutil.Process().memory_info().rss)"


def _fresh_rss_mb(code: str) -> float:
    """RSS of a fresh interpreter after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_RSS_LINE}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1]) / MB


def _cmd_tokens() -> None:
    for label, code in _TOKENIZER_WAYS.items():
        print(f"{label:40s} {_fresh_rss_mb(code):7.1f} MB")


def _cmd_sim(profiles: list[str]) -> None:
    from labkit.lab.simservice import start_sim

    for profile in profiles:
        with start_sim(profile) as sim:
            assert sim.pid is not None
            sim.health()
            print(f"labkit.sim --profile {profile:16s} {rss_mb(sim.pid):7.1f} MB resident after start-up")


def _cmd_sampler(sims: int, samples: int) -> None:
    """CPU time of one sample while ``sims`` simulated services run under a child of this process."""
    import time

    from labkit.lab.simservice import start_sim

    with PeakMemory() as sampler:
        started = [start_sim("fast") for _ in range(sims)]
        try:
            cpu = time.process_time()
            for _ in range(samples):
                sampler.sample()
            per_sample_ms = (time.process_time() - cpu) / samples * 1000
            counted = len(sampler.processes())
        finally:
            for sim in started:
                sim.stop()
    processes = len([n for n in os.listdir("/proc") if n.isdigit()]) if os.path.isdir("/proc") else "?"
    print(f"{per_sample_ms:.2f} ms of CPU per sample, {counted} processes counted, {processes} on the machine")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.lab.memory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="a simulated service's resident memory after start-up")
    sim.add_argument("--profile", action="append", default=None, help="profiles to start (repeatable)")
    sub.add_parser("tokens", help="a fresh interpreter with a tokenizer: bpe-openai's wrapper vs labkit.tokens")
    sampler = sub.add_parser("sampler", help="the CPU one sample of the report's memory sampler costs")
    sampler.add_argument("--sims", type=int, default=4)
    sampler.add_argument("--samples", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "sim":
        _cmd_sim(args.profile or ["gpt-4o-class", "fast"])
    elif args.command == "sampler":
        _cmd_sampler(args.sims, args.samples)
    else:
        _cmd_tokens()


if __name__ == "__main__":
    main()


__all__ = ["BUDGET_MB", "Peak", "PeakMemory", "process_label", "rss_mb"]

"""Worker processes get their API key through the environment: it reaches them, and never their command line.

The simulated service here accepts one key only, so a worker that answers proves the key arrived; its
`/proc/<pid>/cmdline` (what `ps` shows every user of the machine) must not contain it.
"""

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from labkit.lab.processes import child_env
from labkit.lab.services import start_sim
from labkit.lessons.dedup.worker import WorkerPool

SECRET = f"sk-test-{uuid.uuid4().hex}"

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc to read argv")


@pytest.fixture(scope="module")
def keyed_sim():
    with start_sim("fast", seed=0, api_key=SECRET) as service:
        yield service


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_a_dedup_worker_without_the_key_is_refused(keyed_sim):
    async with WorkerPool(1, base_url=keyed_sim.base_url, api_key="sk-wrong", max_tokens=5) as pool:
        [report] = await pool.run("none", "hello", 1)
    assert report["ok"] == 0 and "AuthenticationError" in report["errors"][0]


async def test_dedup_workers_get_the_key_but_not_on_their_command_line(keyed_sim):
    async with WorkerPool(2, base_url=keyed_sim.base_url, api_key=SECRET, max_tokens=5) as pool:
        argv = [cmdline(pid) for pid in pool.pids]
        reports = await pool.run("local", f"hello {uuid.uuid4().hex}", 1)
    assert all(r["ok"] == 1 and not r["errors"] for r in reports)  # the service takes only SECRET
    assert len(argv) == 2 and all(b"labkit.lessons.dedup.worker" in a for a in argv)
    assert not any(SECRET.encode() in a for a in argv)


async def test_an_admission_worker_gets_the_key_but_not_on_its_command_line(keyed_sim, redis_service):
    env = {**child_env(), "OPENAI_API_KEY": SECRET}
    argv = [sys.executable, "-m", "labkit.lessons.admission_worker", "--base-url", keyed_sim.base_url]
    argv += ["--redis-url", redis_service.url, "--key", f"test:budget:{uuid.uuid4().hex}"]
    argv += ["--rpm", "6000", "--tpm", "1000000", "--requests", "2", "--max-tokens", "5", "--wait-for-go"]
    pipe = asyncio.subprocess.PIPE
    worker = await asyncio.create_subprocess_exec(*argv, stdin=pipe, stdout=pipe, stderr=pipe, env=env)
    try:
        assert worker.stdout is not None and worker.stdin is not None
        ready = await asyncio.wait_for(worker.stdout.readline(), 60)
        assert ready.strip() == b"ready", (await worker.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
        shown = cmdline(worker.pid)
        out, err = await asyncio.wait_for(worker.communicate(b"go\n"), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert report["ok"] == 2 and report["pid"] == worker.pid and report["pid"] != os.getpid()
    assert b"labkit.lessons.admission_worker" in shown and SECRET.encode() not in shown

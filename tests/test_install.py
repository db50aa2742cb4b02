"""`pip install .` on its own gives a working library: the README's application example runs in a fresh venv.

The tests marked `install` create a venv and install labkit into it from PyPI (about 30 s with pip's cache warm,
a few minutes cold), so they carry the `install` marker; `./lab test` and CI run them with the rest. The others
check, without installing, that pyproject.toml and requirements.txt agree with the tree and with each other.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from openai import OpenAI
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from labkit.lab.services import SimService

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
APP_SECTION = "## Use labkit in an application"
#: What a fresh clone holds (.gitignore): a build/ left by an earlier in-tree build would leak stale modules into
#: the wheel, so the install is made from a copy without them, as CI's fresh clone would be.
NOT_IN_A_CLONE = (
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
)
#: Variables that would let the fresh venv see the checkout or another environment instead of what it installed.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LABKIT_DATA", "OPENAI_BASE_URL", "OPENAI_API_KEY")


def readme_app_example() -> str:
    """The first fenced python block of the README's application section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert APP_SECTION + "\n" in readme, f"README.md has no section headed exactly {APP_SECTION!r}"
    section = readme.split(APP_SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert found, f"no ```python block in README's {APP_SECTION!r}"
    return found.group(1)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    return env | extra


# -- without installing ------------------------------------------------------------------------------------------


def test_requirements_pin_every_declared_dependency_within_its_range() -> None:
    """The lab installs requirements.txt, then labkit with --no-deps: each declared dependency must be pinned there."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (version,) = (s.version for s in requirement.specifier if s.operator == "==")
            pinned[canonicalize_name(requirement.name)] = version
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    wrong = []
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "labkit":  # an extra that includes another extra
            continue
        if name not in pinned or not requirement.specifier.contains(pinned[name], prereleases=True):
            wrong.append(f"{text} (requirements.txt: {pinned.get(name, 'missing')})")
    assert not wrong, f"requirements.txt does not satisfy: {wrong}"


def test_readme_app_example_is_at_most_15_lines() -> None:
    lines = [line for line in readme_app_example().splitlines() if line.strip()]
    assert len(lines) <= 15, "\n".join(lines)


# -- in a fresh venv ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new venv that has nothing but `pip install <a clean copy of the repository>`."""
    work = tmp_path_factory.mktemp("install")
    source = work / "labkit-src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, env=clean_env())
    python = work / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=900,
    )
    assert install.returncode == 0, f"pip install . failed:\n{install.stdout[-4000:]}\n{install.stderr[-4000:]}"
    return python


def run_against(python: Path, sim: SimService, folder: Path, program: str) -> subprocess.CompletedProcess[str]:
    """Run `program` with the fresh venv's python, its endpoint in OPENAI_BASE_URL and OPENAI_API_KEY."""
    script = folder / "app.py"
    script.write_text(program, encoding="utf-8")
    return subprocess.run(
        [str(python), str(script)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=clean_env(OPENAI_BASE_URL=sim.base_url, OPENAI_API_KEY=sim.api_key),
        timeout=120,
    )


def requests_of(program: str) -> list[tuple[str, str, dict[str, object]]]:
    """(method, prompt, literal keyword arguments) of each `.complete(...)` / `.stream(...)` call, in order."""
    calls = []
    for node in ast.walk(ast.parse(program)):
        method = node.func.attr if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if isinstance(node, ast.Call) and method in ("complete", "stream") and node.args:
            prompt = ast.literal_eval(node.args[0])
            params = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            calls.append((node.lineno, method, prompt, params))
    return [call[1:] for call in sorted(calls, key=lambda call: call[0])]


@pytest.mark.install
@pytest.mark.timeout(900)
def test_readme_app_example_runs_in_a_fresh_venv(fresh_python: Path, fresh_sim: SimService, tmp_path: Path) -> None:
    program = readme_app_example()
    calls = requests_of(program)
    assert [method for method, _, _ in calls] == ["complete", "stream"], (
        f"the README example should send one plain request, then one streamed one; found {calls}"
    )
    assert all(params.get("temperature") == 0 or "seed" in params for _, _, params in calls), (
        "the simulated service repeats an answer only at temperature 0 or with a seed: this test asks it again"
    )
    run = run_against(fresh_python, fresh_sim, tmp_path, program)
    assert run.returncode == 0, run.stderr[-4000:]
    # The simulated service answers the same reproducible request with the same text: ask it directly for both.
    client = OpenAI(base_url=fresh_sim.base_url, api_key=fresh_sim.api_key, max_retries=0)
    answers = [
        client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **params)
        .choices[0]
        .message.content
        for _, prompt, params in calls
    ]
    client.close()
    assert all(answers)
    assert run.stdout == "".join(f"{answer}\n" for answer in answers)


SDK_CHAIN = """
import asyncio
from labkit.assemble import ChainConfig, build_chain
from labkit.chain import Chain
from labkit.endpoint import Endpoint
from labkit.transports.sdk import OpenAITransport

async def main():
    async with build_chain(ChainConfig(lean=False), Endpoint.from_env()) as built:  # the SDK on the shared pool
        answer = await built.chain.complete("Say hi.", model="gpt-4o", max_tokens=8, temperature=0)
        print(answer.choices[0].message.content)
    async with OpenAITransport(Endpoint.from_env()) as transport:  # the SDK on a client of its own
        answer = await Chain(transport).complete("Say hi.", model="gpt-4o", max_tokens=8, temperature=0)
        print(answer.choices[0].message.content)

asyncio.run(main())
"""


@pytest.mark.install
@pytest.mark.timeout(900)
def test_the_sdk_transport_works_with_the_releases_pip_resolves_today(
    fresh_python: Path, fresh_sim: SimService, tmp_path: Path
) -> None:
    # The lab pins requirements.txt; `pip install .` takes the newest openai/httpx2 its ranges allow (openai 3.63
    # refused the httpx Timeout an `OpenAITransport` with a client of its own once passed it; the pool's was fine):
    # the official SDK must answer both ways.
    run = run_against(fresh_python, fresh_sim, tmp_path, SDK_CHAIN)
    assert run.returncode == 0, run.stderr[-4000:]
    assert len(run.stdout.split("\n")) == 3 and all(run.stdout.split("\n")[:2])


LIBRARY_IMPORTS = """
import importlib, pkgutil, sys
import labkit
print(labkit.__file__)
skip = ("labkit.lab", "labkit.lessons", "labkit.sim")  # they need the `lab` extra
for module in pkgutil.walk_packages(labkit.__path__, "labkit."):
    if not module.name.startswith(skip):
        importlib.import_module(module.name)
"""


@pytest.mark.install
@pytest.mark.timeout(900)
def test_every_library_module_imports_with_the_base_dependencies(fresh_python: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [str(fresh_python), "-c", LIBRARY_IMPORTS], capture_output=True, text=True, cwd=tmp_path, env=clean_env()
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert Path(run.stdout.strip()).is_relative_to(fresh_python.parent.parent), "labkit came from outside the venv"


@pytest.mark.install
@pytest.mark.timeout(900)
def test_the_wheel_holds_every_package_and_data_file(fresh_python: Path) -> None:
    site = subprocess.run(
        [str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    installed = Path(site) / "labkit"
    packages = {p.parent.relative_to(ROOT) for p in (ROOT / "labkit").rglob("__init__.py")}
    missing = [str(p) for p in packages if not (installed.parent / p / "__init__.py").exists()]
    data = [p.name for p in (ROOT / "data").iterdir() if p.is_file()]
    missing += [f"data/{name}" for name in data if not (installed / "_data" / name).exists()]
    assert not missing, f"not in the installed wheel: {missing}"

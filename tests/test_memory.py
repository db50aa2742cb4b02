"""The lab's memory budget: what a simulated service holds, how tokens are counted without the tokenizer
wrapper's tables, and the report's peak-memory sampler (labkit.lab.memory, labkit.lab.report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit.lab import report
from labkit.lab.memory import PeakMemory, rss_mb
from labkit.lab.simservice import start_sim

HOLD_MB = 200  # what the tiny notebook's child process holds
HOLD = f"import time\nb = b'x' * ({HOLD_MB} * 1024 * 1024)\nprint('held', flush=True)\ntime.sleep(60)"


def fresh_interpreter(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return what it printed."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_simulated_service_holds_less_than_its_server_framework_plus_the_tokenizer_wrapper():
    # the baseline: aiohttp's server and one encoding built through bpe-openai's Python wrapper, nothing else
    baseline = int(
        fresh_interpreter(
            "import aiohttp.web, bpe_openai, psutil\n"
            "bpe_openai.encoding_for_model('gpt-4o').encode('hello')\n"
            "print(psutil.Process().memory_info().rss)"
        )
    ) / (1024 * 1024)
    with start_sim("gpt-4o-class") as sim:
        sim.health()
        assert sim.pid is not None
        held = rss_mb(sim.pid)
    assert held < baseline, f"the service holds {held:.0f} MB; aiohttp plus the wrapper's tokenizer {baseline:.0f} MB"


def test_importing_labkit_tokens_loads_no_tokenizer():
    loaded = fresh_interpreter(
        "import sys, labkit.tokens\nprint(sorted(m for m in sys.modules if m.startswith('bpe_openai')))"
    )
    assert loaded.strip() == "[]"


def test_counting_tokens_leaves_the_tokenizer_wrapper_unimported():
    loaded = fresh_interpreter(
        "import sys\nfrom labkit.tokens import count_text\nassert count_text('hello world') == 2\n"
        "print(sorted(m for m in sys.modules if m.startswith('bpe_openai')))"
    )
    assert loaded.strip() == "['bpe_openai._bindings']"


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "cl100k_base", "gpt-4", "a-lab-model"])
def test_labkit_tokens_give_the_ids_of_the_tokenizer_wrapper(model):
    import bpe_openai

    from labkit.tokens import encoding_for

    try:
        wrapper = bpe_openai.encoding_for_model(model)
    except Exception:  # what labkit.tokens always did for a model bpe-openai does not know
        wrapper = bpe_openai.get_encoding("o200k_base")
    for text in ["Hello world, how are you?", "你好世界 12345\n\n  def f(x):\n    return x**2", "naïve café ☕"]:
        assert encoding_for(model).encode(text) == wrapper.encode(text)


def hold() -> subprocess.Popen[str]:
    """A child process that holds HOLD_MB of resident memory until it is stopped; returns once it does."""
    child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_sampler_leaves_out_processes_already_running():
    child = hold()
    try:
        with PeakMemory(interval_s=0.05) as sampler:
            counted = sampler.processes()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in counted
    assert sampler.peak.peak_mb < HOLD_MB


def tiny_notebook(folder: Path) -> Path:
    """A notebook whose kernel starts a child holding HOLD_MB, as a lesson starts a simulated service."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    parameters = nbformat.v4.new_code_cell("INTERACTIVE = True\nRESULTS_PATH = None")
    parameters.metadata["tags"] = ["parameters"]
    hold_source = "\n".join(
        [
            "import subprocess, sys, time",
            f"code = {HOLD!r}",
            "child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)",
            "assert child.stdout.readline().strip() == 'held'",
            "time.sleep(1.0)  # several of the sampler's intervals",
            "child.kill()",
            "child.wait()",
        ]
    )
    nb.cells = [parameters, nbformat.v4.new_code_cell(hold_source)]
    path = folder / "notebooks" / "99_tiny.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def test_report_records_the_peak_of_a_notebooks_kernel_and_its_children(tmp_path):
    notebook = tiny_notebook(tmp_path)
    assert report.main(["--notebooks", str(notebook.parent), "--out", str(tmp_path / "build")]) == 0
    (run,) = json.loads((tmp_path / "build" / "report" / "runs.json").read_text(encoding="utf-8"))
    by_process = {p["process"]: p["rss_mb"] for p in run["memory"]["at_peak"]}
    assert by_process["python"] >= HOLD_MB  # the child the kernel started
    assert run["memory"]["peak_mb"] >= HOLD_MB + by_process["kernel"]
    assert f"<td>{run['memory']['peak_mb']}</td>" in (tmp_path / "build" / "report" / "index.html").read_text()

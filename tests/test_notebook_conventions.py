"""Every lesson notebook follows the conventions of docs/ARCHITECTURE.md (Notebooks) and has a papermill test."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_is_a_landing_page():
    assert (ROOT / "notebooks" / "00_index.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_tagged_parameters(path):
    first = code_cells(load(path))[0]
    assert "parameters" in first["metadata"].get("tags", [])
    for name in ("INTERACTIVE", "RESULTS_PATH"):
        assert name in "".join(first["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for cell in code_cells(load(path)):
        assert not cell.get("outputs") and not cell.get("execution_count")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_kernelspec_for_papermill(path):
    metadata = load(path)["metadata"]
    assert metadata["kernelspec"]["name"] == "python3" and metadata["language_info"]["name"] == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_never_calls_asyncio_run(path):
    assert not any("asyncio.run(" in "".join(c["source"]) for c in code_cells(load(path)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_a_papermill_test(path):
    assert (ROOT / "tests" / f"test_nb_{path.stem}.py").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_writes_its_results(path):
    writes = re.compile(r"write_results\(\s*RESULTS_PATH")
    assert any(writes.search("".join(c["source"])) for c in code_cells(load(path)))

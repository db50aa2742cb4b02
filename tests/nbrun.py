"""Run a lesson notebook with papermill, small parameters injected, and return the JSON it wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import papermill

from labkit.endpoint import LOCAL_API_KEY

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, tmp_path: Path, **parameters: Any) -> dict[str, Any]:
    """Execute `notebooks/<name>.ipynb` headlessly; its results JSON is what the test asserts on."""
    results_path = tmp_path / f"{name}.json"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.executed.ipynb"),
        parameters={"RESULTS_PATH": str(results_path), "INTERACTIVE": False, **parameters},
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    assert_no_keys_in_outputs(tmp_path / f"{name}.executed.ipynb")
    return json.loads(results_path.read_text(encoding="utf-8"))


def assert_no_keys_in_outputs(executed: Path) -> None:
    """No output of an executed notebook shows an API key the run used (the lab's own, or OPENAI_API_KEY)."""
    keys = {LOCAL_API_KEY, os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY}
    notebook = json.loads(executed.read_text(encoding="utf-8"))
    outputs = json.dumps([cell.get("outputs", []) for cell in notebook["cells"]])
    shown = sorted(key for key in keys if key in outputs)
    assert not shown, f"{executed.name} shows an API key in its outputs ({len(shown)} key(s))"

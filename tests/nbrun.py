"""Run a lesson notebook with papermill, small parameters injected, and return the JSON it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import papermill

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
    return json.loads(results_path.read_text(encoding="utf-8"))

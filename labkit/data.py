"""Where the lab's data files live: `data/` beside the package in a checkout, its copy `labkit/_data` in an installed
wheel, or `LABKIT_DATA`."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The `data/` folder of the lab: prompts, workloads, price table, latency profiles."""
    override = os.environ.get("LABKIT_DATA")
    if override:
        return Path(override)
    shipped = Path(__file__).resolve().parent / "_data"  # an installed wheel carries a copy (pyproject.toml)
    return shipped if shipped.is_dir() else Path(__file__).resolve().parent.parent / "data"


def data_path(name: str) -> Path:
    path = data_dir() / name
    if not path.exists():
        raise FileNotFoundError(
            f"lab data file {name!r} not found in {data_dir()} (set LABKIT_DATA to the lab's data/ folder)"
        )
    return path


def load_prompts(n: int | None = None) -> list[str]:
    """The lab's sample prompts (`data/prompts.jsonl`), cycled when more are asked for than exist."""
    import json

    with open(data_path("prompts.jsonl"), encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    if n is None:
        return prompts
    return [prompts[i % len(prompts)] for i in range(n)]

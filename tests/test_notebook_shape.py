"""The shape of a lesson written as a chapter (docs/ARCHITECTURE.md, Notebooks): short cells, few generated
sentences, a parameters cell, previous/next links, the guide's snippet before the mechanism.

`CHAPTERS` lists the notebooks rewritten as chapters so far; a notebook joins it when it is rewritten, and from
then on these limits hold for it. The counting follows the team's `nbshape` tool: code cells other than the
parameters cell, lines of their stripped source, `Markdown(f"...")` calls.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTERS: tuple[str, ...] = (
    "00_index",
    "01_batching",
    "02_dedup",
    "03_streaming",
    "04_request_levers",
    "05_webchat",
    "06_cache_tiers",
    "07_semantic_cache",
    "08_pooling",
    "09_retries",
    "10_breakers",
    "11_monitoring",
    "12_capstone",
)

MEDIAN_LINES = 12
MAX_LINES = 30
MAX_GENERATED_SENTENCES = 3


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]


def _code(name: str) -> list[str]:
    return [
        "".join(c["source"]).strip()
        for c in _cells(name)
        if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])
    ]


def _markdown(name: str) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(name) if c["cell_type"] == "markdown")


def test_every_chapter_exists() -> None:
    assert all((NOTEBOOKS / f"{name}.ipynb").is_file() for name in CHAPTERS)


@pytest.mark.parametrize("name", CHAPTERS)
def test_code_cells_are_short(name: str) -> None:
    lengths = [len(source.splitlines()) for source in _code(name)]
    assert statistics.median(lengths) <= MEDIAN_LINES, f"median cell {statistics.median(lengths)} lines"
    assert max(lengths) <= MAX_LINES, f"longest cell {max(lengths)} lines"


@pytest.mark.parametrize("name", CHAPTERS)
def test_at_most_three_generated_sentences(name: str) -> None:
    generated = sum(len(re.findall(r"Markdown\(\s*f", source)) for source in _code(name))
    assert generated <= MAX_GENERATED_SENTENCES


@pytest.mark.parametrize("name", CHAPTERS)
def test_first_code_cell_is_the_parameters_cell(name: str) -> None:
    first = next(c for c in _cells(name) if c["cell_type"] == "code")
    assert "parameters" in first.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("name", CHAPTERS)
def test_links_to_the_previous_and_next_lesson(name: str) -> None:
    links = set(re.findall(r"\]\((\d\d_[a-z_]+)\.ipynb\)", _markdown(name)))
    assert len(links) >= 2 or name.startswith("00_"), f"links found: {sorted(links)}"
    assert all((NOTEBOOKS / f"{link}.ipynb").is_file() for link in links)


@pytest.mark.parametrize("name", CHAPTERS)
def test_runs_the_guides_snippet_then_builds_the_mechanism(name: str) -> None:
    headings = [h.lower() for h in re.findall(r"^#+ (.+)$", _markdown(name), flags=re.M)]
    advice = next((i for i, h in enumerate(headings) if "common advice" in h), None)
    build = next((i for i, h in enumerate(headings) if "build it" in h), None)
    library = next((i for i, h in enumerate(headings) if "labkit" in h), None)
    assert advice is not None and build is not None and library is not None, headings
    assert advice < build < library


@pytest.mark.parametrize("name", CHAPTERS)
def test_ends_with_exercises(name: str) -> None:
    assert "exercises" in _markdown(name).lower()

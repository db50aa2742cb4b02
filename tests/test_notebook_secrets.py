"""The executed-notebook check that every notebook test runs: an API key in any output fails the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nbrun import assert_no_keys_in_outputs

from labkit.endpoint import LOCAL_API_KEY


def _executed(tmp_path: Path, text: str) -> Path:
    cell = {"cell_type": "code", "source": "lab", "outputs": [{"output_type": "stream", "text": text}]}
    path = tmp_path / "x.executed.ipynb"
    path.write_text(json.dumps({"cells": [cell, {"cell_type": "markdown", "source": "x"}]}), encoding="utf-8")
    return path


def test_an_output_that_shows_the_key_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="shows an API key"):
        assert_no_keys_in_outputs(_executed(tmp_path, f"Endpoint(base_url='http://x', api_key='{LOCAL_API_KEY}')"))


def test_an_environment_key_in_an_output_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-environment-secret")
    with pytest.raises(AssertionError):
        assert_no_keys_in_outputs(_executed(tmp_path, "Authorization: Bearer sk-test-environment-secret"))


def test_outputs_without_keys_pass(tmp_path: Path) -> None:
    assert_no_keys_in_outputs(_executed(tmp_path, "Endpoint(base_url='http://x', name='default')"))

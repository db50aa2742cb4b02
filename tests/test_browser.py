"""Browser tests in headless Debian chromium (Playwright with executable_path; no downloaded browsers).

1. The chat page: text grows over several reads before the stream ends; Stop aborts a second long answer and the
   simulated service sees the disconnect; bad input and upstream failures show a clear message.
2. 03_streaming.ipynb's live-view cells in JupyterLab: the widget's text grows (so a broken widget front end,
   "Error displaying widget", fails the test), and a click on the Stop pane's button (the learner's path, not the
   scripted `stop_after` of papermill runs) stops the stream: the text stops growing, the pane says it stopped,
   and the next cell reports the disconnect the service saw.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from labkit.lab.services import start_sim
from labkit.lessons.webchat import start_webchat

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent

# The tests run wherever Chromium is installed (`./lab test` installs it as root); without it they are skipped with
# the reason shown in pytest's summary (addopts has -ra). Where it must be there, its absence is a failure: on CI,
# and when CHROMIUM_PATH names a browser that does not exist.
if not Path(CHROMIUM).exists():
    message = (
        f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (or run `./lab test` as root, which installs "
        "it), or set CHROMIUM_PATH to a Chromium binary"
    )
    if os.environ.get("CI") or os.environ.get("CHROMIUM_PATH"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)
from playwright.async_api import async_playwright  # noqa: E402


@pytest.fixture(scope="module")
def bench_sim():
    with start_sim("bench", seed=0) as service:
        yield service


@pytest.fixture(scope="module")
def webchat(bench_sim):
    with start_webchat(bench_sim.base_url, model="gpt-4o") as service:
        yield service


@pytest.fixture
def upstream(bench_sim):
    bench_sim.reset()
    yield bench_sim
    bench_sim.reset()


@pytest.fixture(scope="module")
async def browser():
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    yield page
    await context.close()


LAST_ANSWER = "document.querySelector('#messages .turn.assistant:last-of-type')"


async def answer_state(page):
    return await page.evaluate(
        f"""() => {{ const t = {LAST_ANSWER};
        return t ? {{state: t.dataset.state, length: t.querySelector('.text').textContent.length,
                    reads: Number(t.dataset.reads || 0)}} : null }}"""
    )


async def send(page, message, max_tokens=400):
    await page.fill("#message", message)
    await page.fill("#max-tokens", str(max_tokens))
    await page.click("#send")


async def test_chat_page_streams_and_stops(webchat, upstream, page, tmp_path):
    await page.goto(webchat.url + "/")
    await send(page, "Tell me how streaming works")
    lengths = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = await answer_state(page)
        if state and state["state"] == "streaming" and state["length"] and state["length"] not in lengths:
            lengths.append(state["length"])
        if state and state["state"] in ("done", "error", "stopped"):
            break
        await asyncio.sleep(0.03)
    final = await answer_state(page)
    await page.screenshot(path=str(tmp_path / "chat_streamed.png"), full_page=True)
    assert final["state"] == "done", final
    assert len(lengths) >= 3 and lengths == sorted(lengths)  # seen growing while the stream was open
    assert final["length"] > lengths[0] and final["reads"] >= 3
    assert await page.text_content("#error") == ""

    # a second, long answer: press Stop while it streams
    await send(page, "Now a very long answer please")
    await page.wait_for_function(f"() => {LAST_ANSWER}.dataset.state === 'streaming'", timeout=10_000)
    await page.wait_for_function(f"() => {LAST_ANSWER}.querySelector('.text').textContent.length > 20")
    await page.click("#stop")
    await page.wait_for_function(f"() => {LAST_ANSWER}.dataset.state === 'stopped'", timeout=5_000)
    stopped_at = (await answer_state(page))["length"]
    await asyncio.sleep(0.5)
    assert (await answer_state(page))["length"] == stopped_at  # nothing more arrived
    assert stopped_at > 0
    await page.screenshot(path=str(tmp_path / "chat_stopped.png"), full_page=True)
    for _ in range(50):
        if upstream.stats()["disconnects"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert upstream.stats()["disconnects"] == 1  # the abort reached the model service
    assert upstream.stats()["tokens_generated"] < 100  # the second answer was cut short (50 tokens each)
    assert webchat.stats()["recent"][-1]["outcome"] == "cancelled"
    assert (tmp_path / "chat_stopped.png").stat().st_size > 1000


async def test_chat_page_shows_clear_errors_and_keeps_working(webchat, upstream, page, tmp_path):
    await page.goto(webchat.url + "/")
    await page.click("#send")  # empty
    assert "empty" in await page.text_content("#error")
    await send(page, "x" * 5000)  # oversized: the server's 413 message
    await page.wait_for_function("() => document.querySelector('#error').textContent.includes('too long')")
    upstream.set_faults({"error_rates": {"500": 1.0}})
    await send(page, "hello")
    await page.wait_for_function("() => document.querySelector('#error').textContent.includes('500')")
    upstream.set_faults({"stream_error_rate": 1.0})
    await send(page, "hello again")
    await page.wait_for_function("() => document.querySelector('#error').textContent.includes('broke off')")
    assert (await answer_state(page))["state"] == "error"
    await page.screenshot(path=str(tmp_path / "chat_errors.png"), full_page=True)
    upstream.set_faults({})
    await send(page, "and now it works", max_tokens=5)
    await page.wait_for_function(f"() => {LAST_ANSWER}.dataset.state === 'done'", timeout=10_000)
    assert await page.text_content("#error") == ""


# -- JupyterLab -----------------------------------------------------------------------------------------

TEST_PARAMETERS = {
    "PROFILE": "bench",
    "MODEL": "gpt-4o",
    "PROFILE_B": "fast",
    "MODEL_B": "gpt-4o-mini",
    "LIVE_MAX_TOKENS": 50,
    "STOP_AFTER_TOKENS": 20,
    "SEED": 0,
    "INTERACTIVE": True,  # nothing scripted: the test clicks Stop itself
    "RESULTS_PATH": None,
}
STOP_RESULT_CELL = "await pane.result()"  # the cell after the Stop pane's start: it waits for the outcome


def live_view_notebook(folder: Path) -> Path:
    """03_streaming's parameters, set-up and live-view cells (tags `parameters`, `setup`, `live`), the test's
    parameters overriding the notebook's own (as papermill injects them)."""
    source = nbformat.read(ROOT / "notebooks" / "03_streaming.ipynb", as_version=4)
    tags = {"parameters", "setup", "live"}
    cells = [c for c in source.cells if c.cell_type == "code" and tags & set(c.metadata.get("tags", []))]
    params = "\n".join(f"{k} = {v!r}" for k, v in TEST_PARAMETERS.items())
    nb = nbformat.v4.new_notebook(metadata=source.metadata)
    nb.cells = [nbformat.v4.new_code_cell(c.source) for c in cells]
    nb.cells.insert(1, nbformat.v4.new_code_cell(params))  # right after the notebook's parameters cell
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "await aclient.close()\nawait transport_a.aclose()\nawait transport_b.aclose()\nlab.stop()"
        )
    )
    path = folder / "03_streaming.ipynb"
    nbformat.write(nb, path)
    return path


def cell_index(path: Path, snippet: str) -> int:
    """The index of the one code cell of the notebook at `path` whose source contains `snippet`."""
    cells = nbformat.read(path, as_version=4).cells
    hits = [i for i, c in enumerate(cells) if snippet in c.source]
    assert len(hits) == 1, (snippet, hits)
    return hits[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    port, token = free_port(), "labkit-test-token"
    root = tmp_path / "lab"
    root.mkdir()
    notebook = live_view_notebook(root)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), PYTHONPATH=str(ROOT))
    jupyter = Path(sys.executable).parent / "jupyter"
    argv = [
        str(jupyter), "lab", "--no-browser", "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--ServerApp.allow_root=True",
    ]  # fmt: skip
    log = open(tmp_path / "jupyter.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "jupyter.log").read_text(errors="replace")[-3000:]) from None
                time.sleep(0.2)
        yield url, token, notebook
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def run_cells(page, command: str, index: int) -> None:
    """Make cell `index` the active one and run `command` (run-all-above / run-all-below) without awaiting it:
    the command's promise settles only when its cells have run."""
    await page.evaluate(
        """([command, index]) => { const panel = window.jupyterapp.shell.currentWidget;
        panel.content.activeCellIndex = index; window.jupyterapp.commands.execute(command); }""",
        [command, index],
    )


async def pane_texts(page) -> list[int]:
    return await page.eval_on_selector_all(".lk-live-text", "els => els.map(e => e.textContent.length)")


async def pane_stats(page) -> list[str]:
    return await page.eval_on_selector_all(".lk-live-stats", "els => els.map(e => e.innerText)")


async def test_live_view_grows_and_the_stop_button_stops_it_in_jupyterlab(jupyterlab, page, tmp_path):
    url, token, notebook = jupyterlab
    stop_result = cell_index(notebook, STOP_RESULT_CELL)
    await page.goto(f"{url}/lab/tree/03_streaming.ipynb?token={token}", timeout=60_000)
    await page.wait_for_function(
        """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return k && k.status === 'idle'; }""",
        timeout=60_000,
    )
    # everything up to the Stop pane's start: its stream then runs as a task while no cell runs, so the kernel
    # delivers the button's click (it would not while `await pane.result()` runs)
    await run_cells(page, "notebook:run-all-above", stop_result)
    lengths: dict[int, list[int]] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(lengths.get(2, [])) < 2:
        assert await page.get_by_text("Error displaying widget").count() == 0
        for i, n in enumerate(await pane_texts(page)):
            seen = lengths.setdefault(i, [])
            if n and (not seen or n != seen[-1]):
                seen.append(n)
        await asyncio.sleep(0.02)
    assert len(lengths) == 3, lengths  # two panes side by side, and the Stop pane
    assert len(lengths[0]) >= 3 and lengths[0] == sorted(lengths[0]), lengths  # the bench pane grew over time
    assert len(lengths[2]) >= 2 and lengths[2] == sorted(lengths[2]), lengths  # the Stop pane is growing

    # the learner's click on the Stop pane's button, while its stream is still running
    stop_button = page.locator(".lk-live-pane").nth(2).locator("button", has_text="Stop")
    assert await stop_button.is_enabled()
    await stop_button.click()
    await page.wait_for_function(
        "() => { const s = document.querySelectorAll('.lk-live-stats')[2]; return s && /done|stopped|error/.test("
        "s.innerText) && s.innerText.includes('usage'); }",
        timeout=10_000,
    )
    stats = (await pane_stats(page))[2]
    assert "stopped" in stats, f"the stream was not stopped by the click: {stats!r}"
    assert "estimated from the partial text" in stats, stats  # no usage chunk for a stopped stream
    stopped_tokens = int(re.search(r"usage: (\d+) tokens", stats).group(1))
    assert 0 < stopped_tokens < 50, stats  # 'bench' answers have 50 tokens: this one was cut short
    stopped_length = (await pane_texts(page))[2]
    assert stopped_length >= lengths[2][-1] > 0
    await asyncio.sleep(0.6)  # 30 more tokens' worth at 20 ms each, had the stream gone on
    assert (await pane_texts(page))[2] == stopped_length, "the text kept growing after Stop"
    assert await stop_button.is_disabled()
    await page.screenshot(path=str(tmp_path / "jupyterlab_live_view_stopped.png"), full_page=True)

    # the next cell collects the outcome: the service saw the connection close
    await run_cells(page, "notebook:run-all-below", stop_result)
    rendered = "() => [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n')"
    await page.wait_for_function(f"() => ({rendered})().includes('disconnect(s)')", timeout=30_000)
    report = await page.evaluate(rendered)
    assert "Stream stopped" in report and "counted 1 disconnect(s)" in report, report
    assert f"usage {stopped_tokens} completion tokens (estimated from the partial text)" in report, report
    errors = await page.eval_on_selector_all(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']", "els => els.map(e => e.innerText)"
    )
    assert not errors, errors
    await page.screenshot(path=str(tmp_path / "jupyterlab_live_view.png"), full_page=True)

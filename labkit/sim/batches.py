"""The OpenAI-style Batch API of the simulator: files in, a batch job, files out, at half the price.

Routes: ``POST /v1/files`` (multipart, as the SDK's ``client.files.create`` sends it), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Objects follow the official OpenAPI schemas (`Batch`, `OpenAIFile`); the
output and error files use the real JSONL lines (``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``). The 24 h completion window is compressed: a batch finishes about
``LABKIT_SIM_BATCH_SECONDS`` (default 2) seconds after it starts, so a lesson can wait for it. Batch requests
do not count against the online RPM/TPM limits, as real batch queues have limits of their own.

Each line is checked and answered by the functions `/v1/chat/completions` uses (`labkit.sim.chat`): the same
errors, length model and text, and at temperature 0 or with a `seed` the same answer as online; only the pacing
is left out, as a batch is not latency-bound.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from labkit.sim import errors
from labkit.sim.chat import answer_rng, check_chat, completion, draw_answer, usage
from labkit.sim.errors import APIError
from labkit.sim.state import SimState, json_response
from labkit.sim.validation import chat_params

__all__ = ["BatchStore", "setup"]

ENDPOINTS = ("/v1/chat/completions",)
COMPLETION_WINDOWS = ("24h",)
WINDOW_S = 24 * 3600
FILE_TTL_S = 30 * 24 * 3600


def _batch_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("LABKIT_SIM_BATCH_SECONDS", "2")))
    except ValueError:
        return 2.0


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


@dataclass
class StoredFile:
    meta: dict[str, Any]
    data: bytes


@dataclass
class Job:
    obj: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    failures: list[bytes] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False


class BatchStore:
    """Uploaded files and batch jobs of one simulator instance (in memory)."""

    def __init__(self, sim_state: SimState) -> None:
        self.sim = sim_state
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self.seconds = _batch_seconds()

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        now = int(time.time())
        meta = {
            "id": _id("file-"),
            "object": "file",
            "bytes": len(data),
            "created_at": now,
            "expires_at": now + FILE_TTL_S,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[meta["id"]] = StoredFile(meta, data)
        return meta

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise APIError(404, f"No such File object: {file_id}", "invalid_request_error", param="id")
        return stored


STORE: web.AppKey[BatchStore] = web.AppKey("labkit_sim_batches", BatchStore)


# -- files ------------------------------------------------------------------------------------------------


async def create_file(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.sim.auth(request)
    if not request.content_type.startswith("multipart/"):
        raise errors.invalid_request("Expected a multipart/form-data upload with 'file' and 'purpose'.")
    form = await request.post()
    purpose = form.get("purpose")
    upload = form.get("file")
    if not isinstance(purpose, str) or not purpose:
        raise errors.invalid_request("Missing required parameter: 'purpose'.", param="purpose")
    if purpose != "batch":
        raise errors.invalid_request(
            f"Invalid value for 'purpose': {purpose!r}. The simulator accepts only 'batch'.", param="purpose"
        )
    if upload is None or isinstance(upload, str) or not hasattr(upload, "file"):
        raise errors.invalid_request("Missing required parameter: 'file'.", param="file")
    data = upload.file.read()
    if not data.strip():
        raise errors.invalid_request("The uploaded file is empty.", param="file")
    return json_response(store.add_file(data, upload.filename or "upload.jsonl", purpose))


async def get_file(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.sim.auth(request)
    return json_response(store.file(request.match_info["file_id"]).meta)


async def file_content(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.sim.auth(request)
    stored = store.file(request.match_info["file_id"])
    return web.Response(body=stored.data, content_type="application/octet-stream")


# -- batches ----------------------------------------------------------------------------------------------


def _parse_lines(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The request lines of an input file, or the errors that fail the batch (line numbers from 1)."""
    lines: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def bad(number: int, code: str, message: str, param: str | None = None) -> None:
        problems.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict):
            bad(number, "invalid_json_line", "Each line must be a JSON object.")
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            bad(number, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
            continue
        if custom_id in seen:
            bad(number, "duplicate_custom_id", f"The custom_id {custom_id!r} appears more than once.", "custom_id")
            continue
        if line.get("method") != "POST":
            bad(number, "invalid_method", "Only the POST method is supported.", "method")
            continue
        if line.get("url") != endpoint:
            bad(number, "mismatched_endpoint", f"The url must be {endpoint!r}, as the batch's endpoint.", "url")
            continue
        body = line.get("body")
        if not isinstance(body, dict):
            bad(number, "invalid_request", "The body must be a JSON object.", "body")
            continue
        if body.get("stream"):
            bad(number, "invalid_request", "Streaming is not supported in batches.", "body.stream")
            continue
        seen.add(custom_id)
        models.add(str(body.get("model")))
        lines.append(line)
    if len(models) > 1:
        problems.append(
            {
                "code": "mismatched_model",
                "message": "The batch input file must contain requests for a single model.",
                "param": "body.model",
                "line": None,
            }
        )
    if not lines and not problems:
        problems.append(
            {"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": None}
        )
    return lines, problems


def _complete_line(store: BatchStore, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status code, body) of one request: checked and answered by the online endpoint's own functions."""
    st = store.sim
    try:
        p = chat_params(line["body"])
        prompt = check_chat(st.profile, p)
    except APIError as error:
        return error.status, error.body()
    tokens, finish = draw_answer(st.profile, prompt.model, p, answer_rng(st, p, prompt.model))
    st.engine.tokens_generated += len(tokens)
    return 200, completion(st, prompt.model, tokens, finish, usage(prompt.tokens, len(tokens)))


def _line_out(custom_id: str, status: int, body: dict[str, Any]) -> bytes:
    line = {
        "id": _id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": _id("req_"), "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


async def _process(store: BatchStore, job: Job) -> None:
    obj = job.obj
    input_data = store.file(obj["input_file_id"]).data
    await asyncio.sleep(0.05)  # validating
    lines, problems = _parse_lines(input_data, obj["endpoint"])
    if problems:
        obj.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": problems})
        return
    obj["request_counts"]["total"] = len(lines)
    obj.update(status="in_progress", in_progress_at=int(time.time()))
    usage = {"input_tokens": 0, "output_tokens": 0}
    step = store.seconds / max(1, len(lines))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, line in enumerate(lines):
        if job.cancel_requested:
            break
        delay = start + (i + 1) * step - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        status, body = _complete_line(store, line)
        if status == 200:
            job.outputs.append(_line_out(line["custom_id"], status, body))
            obj["request_counts"]["completed"] += 1
            usage["input_tokens"] += body["usage"]["prompt_tokens"]
            usage["output_tokens"] += body["usage"]["completion_tokens"]
        else:
            job.failures.append(_line_out(line["custom_id"], status, body))
            obj["request_counts"]["failed"] += 1
    obj["usage"] = {
        "input_tokens": usage["input_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
    }
    if not job.cancel_requested:
        obj.update(status="finalizing", finalizing_at=int(time.time()))
        await asyncio.sleep(0.05)
    if job.outputs:
        obj["output_file_id"] = store.add_file(b"".join(job.outputs), f"{obj['id']}_output.jsonl", "batch_output")["id"]
    if job.failures:
        obj["error_file_id"] = store.add_file(b"".join(job.failures), f"{obj['id']}_error.jsonl", "batch_output")["id"]
    if job.cancel_requested:
        obj.update(status="cancelled", cancelled_at=int(time.time()))
    else:
        obj.update(status="completed", completed_at=int(time.time()))


async def create_batch(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.sim.auth(request)
    body = await store.sim.read_json(request)
    input_file_id = body.get("input_file_id")
    endpoint = body.get("endpoint")
    window = body.get("completion_window")
    metadata = body.get("metadata")
    if not isinstance(input_file_id, str):
        raise errors.invalid_request("Missing required parameter: 'input_file_id'.", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise errors.invalid_request(
            f"Invalid value for 'endpoint': {endpoint!r}. The simulator supports {', '.join(ENDPOINTS)}.",
            param="endpoint",
        )
    if window not in COMPLETION_WINDOWS:
        raise errors.invalid_request(
            f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
            param="completion_window",
        )
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise errors.invalid_request("'metadata' must be an object of string values.", param="metadata")
    stored = store.file(input_file_id)
    if stored.meta["purpose"] != "batch":
        raise errors.invalid_request("The input file must have purpose 'batch'.", param="input_file_id")
    now = int(time.time())
    obj: dict[str, Any] = {
        "id": _id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }
    job = Job(obj)
    store.jobs[obj["id"]] = job
    job.task = asyncio.get_running_loop().create_task(_process(store, job))
    return json_response(_public(obj))


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """The batch object as the API shows it: fields that are not set yet are left out, like the real one."""
    return {k: v for k, v in obj.items() if v is not None or k == "metadata"}


def _job(request: web.Request) -> Job:
    store = request.app[STORE]
    store.sim.auth(request)
    batch_id = request.match_info["batch_id"]
    job = store.jobs.get(batch_id)
    if job is None:
        raise APIError(404, f"No such Batch object: {batch_id}", "invalid_request_error", param="id")
    return job


async def get_batch(request: web.Request) -> web.StreamResponse:
    return json_response(_public(_job(request).obj))


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    if job.obj["status"] in ("validating", "in_progress", "finalizing"):
        job.cancel_requested = True
        job.obj.update(status="cancelling", cancelling_at=int(time.time()))
    elif job.obj["status"] not in ("cancelling", "cancelled"):
        raise errors.invalid_request(f"Cannot cancel a batch with status {job.obj['status']!r}.")
    return json_response(_public(job.obj))


async def list_batches(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    store.sim.auth(request)
    data = [_public(job.obj) for job in reversed(store.jobs.values())]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


def setup(app: web.Application, sim_state: SimState) -> None:
    """Register the Batch API routes on the simulator's application."""
    app[STORE] = BatchStore(sim_state)
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)

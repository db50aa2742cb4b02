"""Request body parsing and validation, answering like the real API: 400 with `param` naming the field.

Unknown standard parameters are accepted and ignored (clients send many); the ones that change what the
simulator does, and the common sampling ones, are type-checked so a lesson's mistakes surface as they
would against the real service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from labkit.sim.errors import APIError, invalid_request

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


def parse_json(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (orjson also rejects invalid UTF-8)."""
    if not raw:
        raise invalid_request("We could not parse the JSON body of your request. The body is empty.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            f"HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
            f"JSON: {e})"
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def _invalid_type(param: str, expected: str, v: Any) -> APIError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(v)} instead.",
        param=param,
        code="invalid_type",
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v):
        raise _invalid_type(name, "a decimal", v)
    if not lo <= v <= hi:
        raise invalid_request(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi}, but got {v} instead."
            if v > hi
            else f"Invalid '{name}': decimal below minimum value. Expected a value >= {lo}, but got {v} instead.",
            param=name,
            code="decimal_above_max_value" if v > hi else "decimal_below_min_value",
        )
    return float(v)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise _invalid_type(name, "an integer", v)
    if v < 1:
        raise invalid_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {v} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return v


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise invalid_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    return model


@dataclass(frozen=True)
class ChatParams:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    seed: int | None


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise invalid_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid_type(where, "an object", m)
        role = m.get("role")
        if role is None:
            raise invalid_request(
                f"Missing required parameter: '{where}.role'.", param=f"{where}.role", code="missing_required_parameter"
            )
        if not isinstance(role, str):
            raise _invalid_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            raise invalid_request(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                "'tool', and 'developer'.",
                param=f"{where}.role",
                code="invalid_value",
            )
        content = m.get("content")
        if content is None:
            if role not in ("assistant", "function") and "content" not in m:
                raise invalid_request(
                    f"Missing required parameter: '{where}.content'.",
                    param=f"{where}.content",
                    code="missing_required_parameter",
                )
            if role not in ("assistant", "function"):
                raise _invalid_type(f"{where}.content", "one of a string or array of objects", content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _invalid_type(f"{where}.content[{j}]", "an object with a string 'type'", part)
        elif not isinstance(content, str):
            raise _invalid_type(f"{where}.content", "one of a string or array of objects", content)
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise _invalid_type(f"{where}.name", "a string", name)
    return messages


def chat_params(body: dict[str, Any]) -> ChatParams:
    """The validated parameters of a chat completion request."""
    model = _require_model(body)
    messages = _check_messages(body.get("messages"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid_type("stream_options", "an object", options)
        if not stream:
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        iu = options.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise _invalid_type("stream_options.include_usage", "a boolean", iu)
        include_usage = bool(iu)
    temperature = _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    max_tokens = _positive_int(body, "max_tokens")
    max_completion = _positive_int(body, "max_completion_tokens")
    if max_tokens is not None and max_completion is not None:
        raise invalid_request(
            "max_tokens and max_completion_tokens cannot both be set; use max_completion_tokens.",
            param="max_tokens",
            code="invalid_value",
        )
    n = body.get("n")
    if n is not None:
        if not _is_int(n):
            raise _invalid_type("n", "an integer", n)
        if n != 1:
            raise invalid_request("This simulated service supports only n=1.", param="n", code="invalid_value")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _invalid_type("seed", "an integer", seed)
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _invalid_type("stop", "one of a string or array of strings", stop)
    for name, kind in (("tools", list), ("metadata", dict), ("user", str), ("response_format", dict)):
        v = body.get(name)
        if v is not None and not isinstance(v, kind):
            raise _invalid_type(name, {list: "an array", dict: "an object", str: "a string"}[kind], v)
    return ChatParams(
        model=model,
        messages=messages,
        stream=bool(stream),
        include_usage=include_usage,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=temperature,
        seed=seed,
    )


@dataclass(frozen=True)
class EmbeddingParams:
    model: str
    inputs: list[str | list[int]]
    dimensions: int | None
    encoding_format: str


def embedding_params(body: dict[str, Any]) -> EmbeddingParams:
    """The validated parameters of an embeddings request (input: string, strings, tokens or token lists)."""
    model = _require_model(body)
    raw = body.get("input")
    if raw is None:
        raise invalid_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    inputs: list[str | list[int]]
    is_list = isinstance(raw, list) and len(raw) > 0
    if isinstance(raw, str) or (is_list and all(_is_int(t) for t in raw)):
        inputs = [raw]  # one string, or one token array
    elif is_list and all(isinstance(t, str) or (isinstance(t, list) and t and all(_is_int(x) for x in t)) for t in raw):
        inputs = list(raw)  # strings, or token arrays
    else:
        raise invalid_request(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            param="input",
            code="invalid_value",
        )
    if len(inputs) > 2048:
        raise invalid_request("'$.input' must contain at most 2048 items.", param="input", code="invalid_value")
    if any(isinstance(s, str) and not s for s in inputs):
        raise invalid_request(
            "'$.input' is invalid: empty strings are not allowed.", param="input", code="invalid_value"
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid_request(
            f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return EmbeddingParams(model, inputs, _positive_int(body, "dimensions"), fmt)

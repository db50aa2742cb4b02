"""labkit.transports.lean: the lean transport gives what the SDK transport gives, against the real sim."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from labkit.endpoint import Endpoint
from labkit.lab.services import SimService, start_sim
from labkit.request import ChatRequest
from labkit.transports.lean import LeanTransport, RateLimitInfo, parse_duration, sse_data
from labkit.transports.pool import ClientPool
from labkit.transports.sdk import OpenAITransport

MODEL = "gpt-4o-mini"
KEY = "sk-lab-local"


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[SimService]:
    """A sim of its own (its faults change here) that accepts one API key only, so a wrong key is a 401."""
    with start_sim("fast", seed=5, api_key=[KEY]) as service:
        yield service


@pytest.fixture
async def both(keyed_sim) -> AsyncIterator[tuple[LeanTransport, OpenAITransport]]:
    await keyed_sim.areset()
    pool = ClientPool()
    yield LeanTransport(keyed_sim.endpoint, pool=pool), OpenAITransport(keyed_sim.endpoint, pool=pool)
    await pool.aclose()
    await keyed_sim.areset()


def _same(chunk) -> dict:
    return chunk.model_dump(exclude={"id", "created"})


async def test_same_completion_and_usage_as_the_sdk(both):
    lean, sdk = both
    request = ChatRequest.create(MODEL, "Tell me about pools.", temperature=0, max_tokens=30)
    mine, theirs = await lean(request), await sdk(request)
    assert type(mine) is type(theirs)
    assert mine.choices[0].message.content == theirs.choices[0].message.content
    assert mine.choices[0].finish_reason == theirs.choices[0].finish_reason
    assert mine.usage == theirs.usage
    assert mine._request_id and mine._request_id.startswith("req_")


async def test_same_chunks_and_usage_as_the_sdk(both):
    lean, sdk = both
    request = ChatRequest.create(MODEL, "Tell me about pools.", temperature=0, max_tokens=30, stream=True)
    async with await lean(request) as stream:
        mine = [chunk async for chunk in stream]
    async with await sdk(request) as stream:
        theirs = [chunk async for chunk in stream]
    assert [_same(c) for c in mine] == [_same(c) for c in theirs]
    assert mine[-1].usage is not None and mine[-1].usage == theirs[-1].usage


async def test_rate_limit_headers_are_exposed(both):
    lean, _ = both
    completion = await lean(ChatRequest.create(MODEL, "hi", max_tokens=4))
    info = completion._ratelimit
    assert isinstance(info, RateLimitInfo)
    assert info.limit_requests and info.remaining_requests is not None and info.remaining_requests < info.limit_requests
    assert info.reset_requests_s is not None
    assert lean.last_ratelimit == info
    stream = await lean(ChatRequest.create(MODEL, "hi", max_tokens=4, stream=True))
    await stream.text()
    assert stream.info["ratelimit"].limit_tokens == info.limit_tokens
    assert "x-ratelimit-remaining-tokens" in stream.info["headers"]


async def _error_of(transport, request) -> BaseException:
    try:
        result = await transport(request)
        if request.stream:
            await result.text()
    except Exception as error:
        return error
    raise AssertionError("no error was raised")


async def _assert_same_error(lean, sdk, request) -> openai.APIError:
    mine, theirs = await _error_of(lean, request), await _error_of(sdk, request)
    assert type(mine) is type(theirs)
    assert str(mine) == str(theirs)
    assert mine.body == theirs.body
    if isinstance(theirs, openai.APIStatusError):
        assert mine.status_code == theirs.status_code
        assert mine.response.headers.get("content-type") == theirs.response.headers.get("content-type")
    return mine


async def test_400_maps_to_bad_request_like_the_sdk(both):
    error = await _assert_same_error(*both, ChatRequest.create(MODEL, "hi", max_tokens=10**7))
    assert isinstance(error, openai.BadRequestError)


async def test_401_maps_to_authentication_error_like_the_sdk(keyed_sim):
    wrong = Endpoint(keyed_sim.base_url, "sk-wrong")
    async with ClientPool() as pool:
        error = await _assert_same_error(
            LeanTransport(wrong, pool=pool), OpenAITransport(wrong, pool=pool), ChatRequest.create(MODEL, "hi")
        )
    assert isinstance(error, openai.AuthenticationError)


async def test_404_maps_to_not_found_like_the_sdk(both):
    error = await _assert_same_error(*both, ChatRequest.create("no-such-model", "hi"))
    assert isinstance(error, openai.NotFoundError)
    assert error.body["code"] == "model_not_found"


async def test_429_maps_to_rate_limit_error_with_retry_after_like_the_sdk(both, keyed_sim):
    await keyed_sim.aset_faults({"error_rates": {"429": 1.0}, "retry_after_s": 2.0})
    error = await _assert_same_error(*both, ChatRequest.create(MODEL, "hi"))
    assert isinstance(error, openai.RateLimitError)
    assert error.response.headers["retry-after"]


async def test_500_maps_to_internal_server_error_like_the_sdk(both, keyed_sim):
    await keyed_sim.aset_faults({"error_rates": {"500": 1.0}})
    error = await _assert_same_error(*both, ChatRequest.create(MODEL, "hi"))
    assert isinstance(error, openai.InternalServerError)


async def test_an_error_event_mid_stream_raises_api_error_like_the_sdk(both, keyed_sim):
    await keyed_sim.aset_faults({"stream_error_rate": 1.0})
    error = await _assert_same_error(*both, ChatRequest.create(MODEL, "hi", max_tokens=30, stream=True))
    assert type(error) is openai.APIError
    assert error.body["type"] == "server_error"


async def test_a_connection_dropped_mid_stream_raises_api_connection_error(both, keyed_sim):
    lean, _ = both
    await keyed_sim.aset_faults({"drop_mid_stream_rate": 1.0})
    error = await _error_of(lean, ChatRequest.create(MODEL, "hi", max_tokens=30, stream=True))
    assert isinstance(error, openai.APIConnectionError)


async def test_a_refused_connection_raises_api_connection_error():
    async with LeanTransport(Endpoint("http://127.0.0.1:9/v1")) as lean:
        with pytest.raises(openai.APIConnectionError):
            await lean(ChatRequest.create(MODEL, "hi"))


async def test_a_request_timeout_raises_api_timeout_error(both, keyed_sim):
    lean, _ = both
    await keyed_sim.aset_faults({"hang_rate": 1.0})
    with pytest.raises(openai.APITimeoutError):
        await lean(ChatRequest.create(MODEL, "hi", controls={"timeout": 0.3}))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), ("", None)],
)
def test_parse_duration_reads_go_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


class _Reader:
    """Hands out fixed byte pieces, as `aiohttp.StreamReader.readany()` does (a unit test of the parser only)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"data: a\n\ndata: b\n\n"], ["a", "b"]),
        ([b"data: a\r", b"\n\r\ndata: b\r\n\r\n"], ["a", "b"]),
        ([b": comment\n\nevent: x\ndata: one\ndata: two\n\n"], ["one\ntwo"]),
        ([b"data:nospace\n\nid: 3\n\n"], ["nospace"]),
        ([b"da", b"ta: split\n", b"\n"], ["split"]),
        ([b"data: last-without-blank-line\n"], ["last-without-blank-line"]),
    ],
)
async def test_sse_parser_follows_the_standard(pieces, expected):
    assert [data async for data in sse_data(_Reader(pieces))] == expected

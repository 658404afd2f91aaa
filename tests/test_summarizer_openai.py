"""OpenAI-compatible backend against a real local HTTP server with scripted faults."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from fakes.openai_server import FakeOpenAI, Reply
from prometheus_client import REGISTRY

from conveyor.errors import PermanentError, TransientError
from conveyor.settings import Settings
from conveyor.summarizer.backends.openai_backend import CircuitBreaker, OpenAIBackend

DOCUMENT = (
    "The harbour reopened on Monday after a week of repairs. Engineers replaced two cranes and the "
    "main pier. Shipping companies welcomed the news. Local fishermen had moved to a nearby port. "
    "The city expects traffic to recover within a month. A festival is planned for the summer."
)
FIRST_THREE = (
    "The harbour reopened on Monday after a week of repairs. Engineers replaced two cranes and the "
    "main pier. Shipping companies welcomed the news."
)

Factory = Callable[..., OpenAIBackend]


@pytest.fixture
async def backend_for(openai_server: FakeOpenAI) -> AsyncIterator[Factory]:
    """Builds backends for the fake server with small timeouts; closes them afterwards."""
    made: list[OpenAIBackend] = []

    def make(circuit: CircuitBreaker | None = None, **overrides: object) -> OpenAIBackend:
        options: dict[str, object] = {
            "summarizer_backend": "openai",
            "openai_base_url": openai_server.url,
            "openai_model": "fake-model",
            "openai_timeout_seconds": 2.0,
            "openai_max_retries": 2,
            **overrides,
        }
        backend = OpenAIBackend(Settings(**options), circuit=circuit)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rate_limited() -> float:
    return metric("conveyor_llm_rate_limited_total")


async def test_success_returns_summary_and_records_tokens(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    prompt_before = metric("conveyor_llm_tokens_total", kind="prompt")
    completion_before = metric("conveyor_llm_tokens_total", kind="completion")
    ok_before = metric("conveyor_llm_request_duration_seconds_count", backend="openai", outcome="ok")

    summary = await backend_for().summarize(DOCUMENT, sentences=3)

    assert summary.text == FIRST_THREE
    assert len(summary.sentences) == 3
    assert summary.backend == "openai"
    assert summary.meta == {"model": "fake-model", "input_truncated": False}
    assert openai_server.request_count == 1
    body = openai_server.requests[0].body
    assert body["model"] == "fake-model"
    assert body["messages"][-1] == {"role": "user", "content": DOCUMENT}
    assert metric("conveyor_llm_tokens_total", kind="prompt") > prompt_before
    # The fake counts one token per word of its answer.
    assert metric("conveyor_llm_tokens_total", kind="completion") == completion_before + len(FIRST_THREE.split())
    assert metric("conveyor_llm_request_duration_seconds_count", backend="openai", outcome="ok") == ok_before + 1


async def test_429_is_counted_and_retry_after_honoured(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.rate_limited(retry_after=0.1))
    before = rate_limited()

    summary = await backend_for().summarize(DOCUMENT, sentences=3)

    assert summary.text == FIRST_THREE
    assert rate_limited() == before + 1
    first, second = openai_server.requests
    # The retry waits what the server asked (0.1 s), not a backoff of its own (0.5 s first).
    assert 0.1 <= second.at - first.at < 0.35


async def test_waiting_out_a_429_holds_no_call_slot(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    """One call slot: while the first document waits out its Retry-After, another one is served."""
    openai_server.script(Reply.rate_limited(retry_after=1.0))
    backend = backend_for(openai_max_concurrency=1)
    started = time.monotonic()
    waiting = asyncio.create_task(backend.summarize(DOCUMENT, sentences=3))
    await asyncio.sleep(0.2)
    await backend.summarize(DOCUMENT, sentences=2)
    assert time.monotonic() - started < 0.9, "the second call ran during the first one's wait"
    assert (await waiting).text == FIRST_THREE


async def test_500_then_success(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.error(500))
    before = rate_limited()

    summary = await backend_for().summarize(DOCUMENT, sentences=2)

    assert summary.sentences == [
        "The harbour reopened on Monday after a week of repairs.",
        "Engineers replaced two cranes and the main pier.",
    ]
    assert openai_server.request_count == 2
    assert rate_limited() == before


async def test_429_beyond_retries_is_transient(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(*[Reply.rate_limited(retry_after=0.05)] * 3)
    before = rate_limited()

    with pytest.raises(TransientError, match="429"):
        await backend_for(openai_max_retries=2).summarize(DOCUMENT, sentences=3)

    assert openai_server.request_count == 3
    assert rate_limited() == before + 3


async def test_timeouts_beyond_retries_are_transient(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(*[Reply.slow(5.0)] * 2)
    error_before = metric("conveyor_llm_request_duration_seconds_count", backend="openai", outcome="error")
    backend = backend_for(openai_timeout_seconds=0.3, openai_max_retries=1)

    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        await backend.summarize(DOCUMENT, sentences=3)

    assert time.monotonic() - started < 3.0
    assert openai_server.request_count == 2
    # Every call is observed, the retried one too.
    assert metric("conveyor_llm_request_duration_seconds_count", backend="openai", outcome="error") == error_before + 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_permanent_and_not_retried(
    openai_server: FakeOpenAI, backend_for: Factory, status: int
) -> None:
    openai_server.script(Reply.error(status))
    backend = backend_for()

    with pytest.raises(PermanentError, match=str(status)):
        await backend.summarize(DOCUMENT, sentences=3)

    assert openai_server.request_count == 1
    assert not backend.circuit.is_open


async def test_empty_answer_is_transient_and_retried(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.empty(), Reply.empty())

    with pytest.raises(TransientError, match="empty"):
        await backend_for(openai_max_retries=0).summarize(DOCUMENT, sentences=3)
    assert (await backend_for(openai_max_retries=1).summarize(DOCUMENT, sentences=3)).text == FIRST_THREE
    assert openai_server.request_count == 3


async def test_unreachable_server_is_transient(backend_for: Factory) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(TransientError, match="cannot reach"):
        await backend_for(openai_base_url=f"http://127.0.0.1:{port}/v1", openai_max_retries=0).summarize(
            DOCUMENT, sentences=3
        )


async def test_long_input_is_truncated(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    text = " ".join(["Every sentence here is the same filler sentence."] * 200)

    summary = await backend_for(openai_max_input_chars=1000).summarize(text, sentences=1)

    sent = openai_server.requests[0].body["messages"][-1]["content"]
    assert len(sent) <= 1000
    assert text.startswith(sent)
    assert not sent.endswith(" ")
    assert summary.meta["input_truncated"] is True


async def test_concurrency_is_limited_client_side(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(*[Reply.slow(0.4)] * 4)
    backend = backend_for(openai_max_concurrency=2)

    await asyncio.gather(*(backend.summarize(DOCUMENT, sentences=1) for _ in range(4)))

    arrivals = sorted(request.at for request in openai_server.requests)
    # Two run at once; the third is sent only once one of the first two has finished.
    assert arrivals[2] - arrivals[0] >= 0.35
    assert arrivals[1] - arrivals[0] < 0.3


async def test_circuit_breaker_opens_half_opens_and_closes(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(*[Reply.error(503)] * 4)
    backend = backend_for(circuit=CircuitBreaker(failures=3, open_seconds=0.4), openai_max_retries=0)

    for _ in range(3):
        with pytest.raises(TransientError, match="503"):
            await backend.summarize(DOCUMENT, sentences=1)
    assert metric("conveyor_llm_circuit_open") == 1

    # Open: rejected without a request.
    with pytest.raises(TransientError, match="circuit breaker open"):
        await backend.summarize(DOCUMENT, sentences=1)
    assert openai_server.request_count == 3

    # Half-open: one trial request; it fails, so the circuit opens again at once.
    await asyncio.sleep(0.45)
    with pytest.raises(TransientError, match="503"):
        await backend.summarize(DOCUMENT, sentences=1)
    with pytest.raises(TransientError, match="circuit breaker open"):
        await backend.summarize(DOCUMENT, sentences=1)
    assert openai_server.request_count == 4

    # Half-open again: the trial succeeds and closes the circuit.
    await asyncio.sleep(0.45)
    assert (await backend.summarize(DOCUMENT, sentences=1)).text
    assert metric("conveyor_llm_circuit_open") == 0
    assert (await backend.summarize(DOCUMENT, sentences=1)).text
    assert openai_server.request_count == 6


async def test_one_burst_of_concurrent_failures_does_not_open_the_circuit(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    openai_server.script(*[Reply.error(502)] * 3)
    backend = backend_for(openai_max_concurrency=3, openai_max_retries=0)

    results = await asyncio.gather(
        *(backend.summarize(DOCUMENT, sentences=1) for _ in range(3)), return_exceptions=True
    )

    assert all(isinstance(result, TransientError) for result in results)
    assert not backend.circuit.is_open
    assert (await backend.summarize(DOCUMENT, sentences=1)).text

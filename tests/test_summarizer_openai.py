"""OpenAI-compatible backend against a real local HTTP server with scripted faults."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from fakes.openai_server import FakeOpenAI, Reply
from prometheus_client import REGISTRY

from conveyor.breakers import DependencyUnavailable
from conveyor.errors import PermanentError, TransientError
from conveyor.settings import Settings
from conveyor.summarizer.backends.openai_backend import OpenAIBackend

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

    def make(**overrides: object) -> OpenAIBackend:
        options: dict[str, object] = {
            "summarizer_backend": "openai",
            "openai_base_url": openai_server.url,
            "openai_model": "fake-model",
            "openai_timeout_seconds": 2.0,
            **overrides,
        }
        backend = OpenAIBackend(Settings(**options))
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
    assert summary.meta == {"model": "fake-model", "input_truncated": False,
                            "endpoint": f"llm 127.0.0.1:{openai_server.port}/v1"}
    assert openai_server.request_count == 1
    body = openai_server.requests[0].body
    assert body["model"] == "fake-model"
    assert body["messages"][-1] == {"role": "user", "content": DOCUMENT}
    assert metric("conveyor_llm_tokens_total", kind="prompt") > prompt_before
    # The fake counts one token per word of its answer.
    assert metric("conveyor_llm_tokens_total", kind="completion") == completion_before + len(FIRST_THREE.split())
    assert metric("conveyor_llm_request_duration_seconds_count", backend="openai", outcome="ok") == ok_before + 1


async def test_429_is_the_endpoints_pace_not_the_records_fault(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.rate_limited(retry_after=0.7))
    before = rate_limited()
    backend = backend_for()

    with pytest.raises(DependencyUnavailable, match="429") as raised:
        await backend.summarize(DOCUMENT, sentences=3)

    assert raised.value.retry_after == 0.7 and not raised.value.charge
    assert rate_limited() == before + 1
    assert not backend.endpoints[0].breaker.is_open  # pacing, not an outage
    assert (await backend.summarize(DOCUMENT, sentences=3)).text == FIRST_THREE


@pytest.mark.parametrize("reply", [Reply.error(500), Reply.error(503), Reply.slow(5.0)], ids=["500", "503", "timeout"])
async def test_a_failing_endpoint_is_unavailable_and_uncharged(openai_server: FakeOpenAI, backend_for: Factory,
                                                               reply: Reply) -> None:
    openai_server.script(reply)
    backend = backend_for(openai_timeout_seconds=0.3)

    with pytest.raises(DependencyUnavailable) as raised:
        await backend.summarize(DOCUMENT, sentences=2)

    assert not raised.value.charge
    assert raised.value.dependency == f"llm 127.0.0.1:{openai_server.port}/v1"
    assert (await backend.summarize(DOCUMENT, sentences=2)).text
    assert openai_server.request_count == 2


async def test_a_failure_while_the_endpoint_serves_others_is_charged(openai_server: FakeOpenAI,
                                                                     backend_for: Factory) -> None:
    """An input the provider fails on while it answers everything else points at the record."""
    openai_server.script(Reply(status=500, delay=0.5), Reply.ok())
    backend = backend_for()

    failing = asyncio.create_task(backend.summarize(DOCUMENT, sentences=2))
    await asyncio.sleep(0.1)
    assert (await backend.summarize(DOCUMENT, sentences=2)).text
    with pytest.raises(DependencyUnavailable) as raised:
        await failing

    assert raised.value.charge


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_permanent_and_not_retried(
    openai_server: FakeOpenAI, backend_for: Factory, status: int
) -> None:
    openai_server.script(Reply.error(status))
    backend = backend_for()

    with pytest.raises(PermanentError, match=str(status)):
        await backend.summarize(DOCUMENT, sentences=3)

    assert openai_server.request_count == 1
    assert not backend.endpoints[0].breaker.is_open


async def test_empty_answer_is_a_transient_record_failure(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.empty())
    backend = backend_for()

    with pytest.raises(TransientError, match="empty"):
        await backend.summarize(DOCUMENT, sentences=3)
    assert (await backend.summarize(DOCUMENT, sentences=3)).text == FIRST_THREE


async def test_unreachable_server_is_unavailable(backend_for: Factory) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(DependencyUnavailable, match="cannot reach") as raised:
        await backend_for(openai_base_url=f"http://user:hunter2@127.0.0.1:{port}/v1").summarize(DOCUMENT, sentences=3)
    assert "hunter2" not in str(raised.value) and "hunter2" not in raised.value.dependency


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


async def test_the_circuit_opens_refuses_without_calling_and_closes_on_a_probe(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    openai_server.script(*[Reply.error(503)] * 4)
    backend = backend_for(circuit_failures=3, circuit_probe_seconds=0.3)
    endpoint = backend.endpoints[0]

    for _ in range(3):
        with pytest.raises(DependencyUnavailable, match="503"):
            await backend.summarize(DOCUMENT, sentences=1)
    assert endpoint.breaker.is_open and backend.blocked() == endpoint.name
    assert metric("conveyor_circuit_open", dependency=endpoint.name) == 1

    with pytest.raises(DependencyUnavailable, match="circuit open"):
        await backend.summarize(DOCUMENT, sentences=1)
    assert openai_server.request_count == 3

    # The probe is due after 0.3 s; it fails, and the next one is due 0.6 s later.
    await asyncio.wait_for(endpoint.breaker.wait_usable(), 1)
    with pytest.raises(DependencyUnavailable, match="503"):
        await backend.summarize(DOCUMENT, sentences=1)
    assert not endpoint.breaker.usable()
    await asyncio.wait_for(endpoint.breaker.wait_usable(), 1)
    assert (await backend.summarize(DOCUMENT, sentences=1)).text
    assert not endpoint.breaker.is_open and backend.blocked() is None
    assert metric("conveyor_circuit_open", dependency=endpoint.name) == 0
    assert openai_server.request_count == 5


async def test_one_burst_of_concurrent_failures_does_not_open_the_circuit(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    openai_server.script(*[Reply.error(502)] * 3)
    backend = backend_for(openai_max_concurrency=3, circuit_failures=4)

    results = await asyncio.gather(
        *(backend.summarize(DOCUMENT, sentences=1) for _ in range(3)), return_exceptions=True
    )

    assert all(isinstance(result, DependencyUnavailable) for result in results)
    assert not backend.endpoints[0].breaker.is_open
    assert (await backend.summarize(DOCUMENT, sentences=1)).text


async def test_a_down_primary_falls_back_and_traffic_returns_once_it_recovers(backend_for: Factory) -> None:
    primary, secondary = FakeOpenAI(), FakeOpenAI()
    primary.start()
    secondary.start()
    try:
        primary.fallback = lambda received: Reply.error(503)
        backend = backend_for(openai_base_url=primary.url, openai_fallback_base_urls=[secondary.url],
                              circuit_failures=2, circuit_probe_seconds=0.3)

        served = [(await backend.summarize(DOCUMENT, sentences=1)).meta["endpoint"] for _ in range(6)]

        assert set(served) == {f"llm 127.0.0.1:{secondary.port}/v1"}
        assert primary.request_count == 2  # then its circuit opened: no more calls but probes
        primary.fallback = None
        await asyncio.sleep(0.35)
        served = [(await backend.summarize(DOCUMENT, sentences=1)).meta["endpoint"] for _ in range(3)]
        assert served == [f"llm 127.0.0.1:{primary.port}/v1"] * 3
    finally:
        primary.stop()
        secondary.stop()


async def test_the_pace_learns_a_providers_concurrency_budget(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    """A provider that takes 2 calls at once and answers 429 beyond: the limit settles at 2."""
    def budget(received: object) -> Reply:
        return Reply.rate_limited(0.05) if openai_server.in_flight > 2 else Reply.slow(0.05)

    openai_server.fallback = budget
    backend = backend_for(openai_max_concurrency=6)
    pace = backend.endpoints[0].pace

    async def one() -> None:
        while True:
            try:
                await backend.summarize(DOCUMENT, sentences=1)
                return
            except DependencyUnavailable as exc:
                await asyncio.sleep(exc.retry_after or 0.05)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(60))), 30)

    assert pace.limit <= 3
    assert openai_server.request_count <= 60 * 1.3



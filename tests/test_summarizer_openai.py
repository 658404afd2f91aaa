"""OpenAI-compatible backend against a real local HTTP server with scripted faults."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from fakes.openai_server import FakeOpenAI, Received, Reply
from prometheus_client import REGISTRY

from conveyor.breakers import DependencyUnavailable
from conveyor.document import Block, Document
from conveyor.errors import PermanentError, TransientError
from conveyor.pacing import MIN_EVIDENCE
from conveyor.settings import Settings
from conveyor.summarizer.backends.chunks import chunk_texts
from conveyor.summarizer.backends.openai_backend import OpenAIBackend

DOCUMENT = (
    "The harbour reopened on Monday after a week of repairs. Engineers replaced two cranes and the "
    "main pier. Shipping companies welcomed the news. Local fishermen had moved to a nearby port. "
    "The city expects traffic to recover within a month. A festival is planned for the summer."
)
HARBOUR = Document.from_text(DOCUMENT)  # one prose block
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

    summary = await backend_for().summarize(HARBOUR, sentences=3)

    assert summary.text == FIRST_THREE
    assert len(summary.sentences) == 3
    assert summary.backend == "openai"
    usage = openai_server.usages[0]
    assert summary.meta == {"model": "fake-model", "endpoint": f"llm 127.0.0.1:{openai_server.port}/v1",
                            "chunks": 1, "llm_calls": 1, "cached_calls": 0,
                            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
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
        await backend.summarize(HARBOUR, sentences=3)

    assert raised.value.retry_after == 0.7 and not raised.value.charge
    assert rate_limited() == before + 1
    assert not backend.endpoints[0].breaker.is_open  # pacing, not an outage
    assert (await backend.summarize(HARBOUR, sentences=3)).text == FIRST_THREE


@pytest.mark.parametrize("reply", [Reply.error(500), Reply.error(503), Reply.slow(5.0)], ids=["500", "503", "timeout"])
async def test_a_failing_endpoint_is_unavailable_and_uncharged(openai_server: FakeOpenAI, backend_for: Factory,
                                                               reply: Reply) -> None:
    openai_server.script(reply)
    backend = backend_for(openai_timeout_seconds=0.3)

    with pytest.raises(DependencyUnavailable) as raised:
        await backend.summarize(HARBOUR, sentences=2)

    assert not raised.value.charge
    assert raised.value.dependency == f"llm 127.0.0.1:{openai_server.port}/v1"
    assert (await backend.summarize(HARBOUR, sentences=2)).text
    assert openai_server.request_count == 2


async def test_a_failure_while_the_endpoint_serves_others_is_charged(openai_server: FakeOpenAI,
                                                                     backend_for: Factory) -> None:
    """An input the provider fails on while it answers everything else points at the record."""
    openai_server.script(Reply(status=500, delay=0.5), Reply.ok())
    backend = backend_for()

    failing = asyncio.create_task(backend.summarize(HARBOUR, sentences=2))
    await asyncio.sleep(0.1)
    assert (await backend.summarize(HARBOUR, sentences=2)).text
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
        await backend.summarize(HARBOUR, sentences=3)

    assert openai_server.request_count == 1
    assert not backend.endpoints[0].breaker.is_open


async def test_empty_answer_is_a_transient_record_failure(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(Reply.empty())
    backend = backend_for()

    with pytest.raises(TransientError, match="empty"):
        await backend.summarize(HARBOUR, sentences=3)
    assert (await backend.summarize(HARBOUR, sentences=3)).text == FIRST_THREE


async def test_unreachable_server_is_unavailable(backend_for: Factory) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(DependencyUnavailable, match="cannot reach") as raised:
        await backend_for(openai_base_url=f"http://user:hunter2@127.0.0.1:{port}/v1").summarize(HARBOUR, sentences=3)
    assert "hunter2" not in str(raised.value) and "hunter2" not in raised.value.dependency


async def test_concurrency_is_limited_client_side(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    openai_server.script(*[Reply.slow(0.4)] * 4)
    backend = backend_for(openai_max_concurrency=2)

    await asyncio.gather(*(backend.summarize(HARBOUR, sentences=1) for _ in range(4)))

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
            await backend.summarize(HARBOUR, sentences=1)
    assert endpoint.breaker.is_open and backend.blocked() == endpoint.name
    assert metric("conveyor_circuit_open", dependency=endpoint.name) == 1

    with pytest.raises(DependencyUnavailable, match="circuit open"):
        await backend.summarize(HARBOUR, sentences=1)
    assert openai_server.request_count == 3

    # The probe is due after 0.3 s; it fails, and the next one is due 0.6 s later.
    await asyncio.wait_for(endpoint.breaker.wait_usable(), 1)
    with pytest.raises(DependencyUnavailable, match="503"):
        await backend.summarize(HARBOUR, sentences=1)
    assert not endpoint.breaker.usable()
    await asyncio.wait_for(endpoint.breaker.wait_usable(), 1)
    assert (await backend.summarize(HARBOUR, sentences=1)).text
    assert not endpoint.breaker.is_open and backend.blocked() is None
    assert metric("conveyor_circuit_open", dependency=endpoint.name) == 0
    assert openai_server.request_count == 5


async def test_one_burst_of_concurrent_failures_does_not_open_the_circuit(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    openai_server.script(*[Reply.error(502)] * 3)
    backend = backend_for(openai_max_concurrency=3, circuit_failures=4)

    results = await asyncio.gather(
        *(backend.summarize(HARBOUR, sentences=1) for _ in range(3)), return_exceptions=True
    )

    assert all(isinstance(result, DependencyUnavailable) for result in results)
    assert not backend.endpoints[0].breaker.is_open
    assert (await backend.summarize(HARBOUR, sentences=1)).text


async def test_a_down_primary_falls_back_and_traffic_returns_once_it_recovers(backend_for: Factory) -> None:
    primary, secondary = FakeOpenAI(), FakeOpenAI()
    primary.start()
    secondary.start()
    try:
        primary.fallback = lambda received: Reply.error(503)
        backend = backend_for(openai_base_url=primary.url, openai_fallback_base_urls=[secondary.url],
                              circuit_failures=2, circuit_probe_seconds=0.3)

        served = [(await backend.summarize(HARBOUR, sentences=1)).meta["endpoint"] for _ in range(6)]

        assert set(served) == {f"llm 127.0.0.1:{secondary.port}/v1"}
        assert primary.request_count == 2  # then its circuit opened: no more calls but probes
        primary.fallback = None
        await asyncio.sleep(0.35)
        served = [(await backend.summarize(HARBOUR, sentences=1)).meta["endpoint"] for _ in range(3)]
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
                await backend.summarize(HARBOUR, sentences=1)
                return
            except DependencyUnavailable as exc:
                await asyncio.sleep(exc.retry_after or 0.05)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(60))), 30)

    assert pace.limit <= 3
    # Each level above the budget is given up after MIN_EVIDENCE refusals made at it or above.
    assert openai_server.request_count <= 60 + 4 * MIN_EVIDENCE


# ----------------------------------------------------------------------------- long documents

FACT = "The lighthouse on Skerry Point was painted violet in 1911."
SECTION = re.compile(r"section (\d+) of (\d+)")


def long_document(chars: int, *, last: str = "") -> Document:
    """About `chars` characters of distinct sentences, ten to a paragraph; `last` only in the
    final paragraph."""
    paragraphs: list[str] = []
    while sum(map(len, paragraphs)) < chars:
        first = len(paragraphs) * 10
        paragraphs.append(" ".join(f"Survey note {n} records that plot {n} held {n * 37 % 900 + 100} oak seedlings."
                                   for n in range(first, first + 10)))
    if last:
        paragraphs[-1] = f"{paragraphs[-1]} {last}"
    return Document.of(Block("prose", paragraph) for paragraph in paragraphs)


def system(received: Received) -> str:
    return received.body["messages"][0]["content"]


def user(received: Received) -> str:
    return received.body["messages"][-1]["content"]


def map_calls(server: FakeOpenAI) -> dict[int, list[Received]]:
    """The map phase's requests by section number."""
    found: dict[int, list[Received]] = {}
    for received in server.requests:
        if match := SECTION.search(system(received)):
            found.setdefault(int(match.group(1)), []).append(received)
    return found


def answered_200(server: FakeOpenAI) -> Counter[str]:
    """How often each prompt was answered with a summary."""
    return Counter(user(received) for received, status in server.answers if status == 200)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_chunks_keep_blocks_whole_and_cut_a_long_one_at_sentences() -> None:
    sentences = [f"Sentence number {n} is here." for n in range(100)]
    long_block = " ".join(sentences)  # about 2,700 characters
    chunks = chunk_texts(["A short block.", long_block, "Another short one.", "x" * 2500], 1000)

    assert all(len(chunk) <= 1000 for chunk in chunks)
    assert chunks[0] == "A short block."  # a block is cut only when it is bigger than a chunk
    assert chunks[1].startswith("Sentence number 0 is here.") and all(chunk.endswith(".") for chunk in chunks[1:4])
    assert chunks[3].endswith("Sentence number 99 is here.\n\nAnother short one.")
    assert " ".join(chunks).split() == " ".join(["A short block.", long_block, "Another short one."]).split() + \
        ["x" * 1000, "x" * 1000, "x" * 500]  # nothing lost; a text without spaces is cut where it must be


async def test_a_hundred_page_document_is_summarized_section_by_section(openai_server: FakeOpenAI,
                                                                        backend_for: Factory) -> None:
    document = long_document(300_000, last=FACT)

    summary = await backend_for().summarize(document, sentences=3)

    chunks, requests = summary.meta["chunks"], openai_server.requests
    sections = map_calls(openai_server)
    assert chunks >= 300_000 // 24_000 and sorted(sections) == list(range(1, chunks + 1))
    assert all(len(calls) == 1 for calls in sections.values())
    assert all(len(user(received)) <= 24_000 for received in requests)
    assert [k for k, calls in sections.items() if FACT in user(calls[0])] == [chunks]  # the last section's fact
    # Every word of the document reached the map phase, in order.
    assert " ".join(user(sections[k][0]) for k in sorted(sections)).split() == document.text.split()
    reduce = requests[-1]
    assert len(requests) == chunks + 1 and not SECTION.search(system(reduce))
    assert "exactly 3 sentence" in system(reduce) and len(user(reduce).split("\n\n")) == chunks
    assert summary.text == " ".join(re.split(r"(?<=[.!?])\s+", user(reduce))[:3])  # the fake echoes the reduce
    assert summary.meta["llm_calls"] == chunks + 1 and summary.meta["cached_calls"] == 0
    assert summary.meta["prompt_tokens"] == sum(usage["prompt_tokens"] for usage in openai_server.usages)
    assert summary.meta["completion_tokens"] == sum(usage["completion_tokens"] for usage in openai_server.usages)
    assert summary.meta["completion_tokens"] > 0


async def test_summaries_too_long_for_one_call_are_combined_again(openai_server: FakeOpenAI,
                                                                  backend_for: Factory) -> None:
    openai_server.fallback = lambda received: Reply(usage=False)  # a server that reports no usage

    summary = await backend_for(openai_max_input_chars=1000).summarize(long_document(20_000), sentences=2)

    requests = openai_server.requests
    combines = [received for received in requests if "group" in system(received)]
    assert summary.meta["chunks"] == len(map_calls(openai_server)) > 10
    assert len(combines) >= 2 and all(len(user(received)) <= 1000 for received in requests)
    assert "all the sections" in system(requests[-1])
    assert summary.meta["llm_calls"] == len(requests) == summary.meta["chunks"] + len(combines) + 1
    assert summary.meta["prompt_tokens"] == summary.meta["completion_tokens"] == 0


async def test_a_429_storm_mid_map_costs_waits_not_the_chunks_already_done(openai_server: FakeOpenAI,
                                                                           backend_for: Factory) -> None:
    calls = itertools.count(1)
    storm = range(4, 10)  # after three answers, six 429s in a row
    openai_server.fallback = lambda received: Reply.rate_limited(0.1) if next(calls) in storm else Reply.ok()

    summary = await backend_for().summarize(long_document(300_000), sentences=3)

    chunks = summary.meta["chunks"]
    refused = [received for received, status in openai_server.answers if status == 429]
    assert len(refused) == len(storm) and all(SECTION.search(system(received)) for received in refused)
    assert chunks > len(storm) + 3  # the storm hit the middle of the map phase
    answered = answered_200(openai_server)
    assert len(answered) == chunks + 1 and set(answered.values()) == {1}  # no chunk paid for twice
    assert openai_server.request_count == chunks + 1 + len(storm)
    assert summary.meta["llm_calls"] == chunks + 1


async def test_cancelling_a_summary_mid_map_closes_every_call_in_flight(openai_server: FakeOpenAI,
                                                                        backend_for: Factory) -> None:
    openai_server.fallback = lambda received: Reply.slow(20)
    backend = backend_for(openai_map_concurrency=3, openai_timeout_seconds=30)

    summarizing = asyncio.create_task(backend.summarize(long_document(100_000), sentences=3))
    await until(lambda: openai_server.in_flight == 3)
    await asyncio.sleep(0.2)
    assert openai_server.request_count == 3  # at most CONVEYOR_OPENAI_MAP_CONCURRENCY calls of one document
    cancelled_at = time.monotonic()
    summarizing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await summarizing

    await until(lambda: len(openai_server.disconnects) == 3, timeout=2)
    assert max(openai_server.disconnects) - cancelled_at < 1
    assert openai_server.request_count == 3


async def test_boilerplate_is_not_sent(openai_server: FakeOpenAI, backend_for: Factory) -> None:
    cookies, licence = "Accept all cookies. Manage preferences.", "Copyright 2024 Harbour News. All rights reserved."
    short = Document.of([Block("boilerplate", cookies), Block("heading", "Harbour news"),
                         Block("prose", DOCUMENT), Block("boilerplate", licence)])
    blocks = long_document(5_000).blocks
    long = Document.of([*blocks[:3], Block("boilerplate", cookies), *blocks[3:], Block("boilerplate", licence)])

    await backend_for().summarize(short, sentences=3)
    assert user(openai_server.requests[0]) == f"Harbour news\n\n{DOCUMENT}"
    summary = await backend_for(openai_max_input_chars=1000).summarize(long, sentences=2)
    assert summary.meta["chunks"] > 1
    assert not any(cookies in user(received) or licence in user(received) for received in openai_server.requests)


async def test_when_every_circuit_opens_mid_map_the_outage_goes_up_and_finished_chunks_are_kept(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    calls, outage = itertools.count(1), {"on": True}
    openai_server.fallback = lambda received: (Reply.error(503) if next(calls) > 3 and outage["on"]
                                               else Reply.ok())
    backend = backend_for(openai_max_input_chars=1000, openai_map_concurrency=3, circuit_failures=2,
                          circuit_probe_seconds=0.2, retry_base_seconds=0.01)
    document = long_document(6_000)

    with pytest.raises(DependencyUnavailable) as raised:
        await asyncio.wait_for(backend.summarize(document, sentences=2), 10)
    assert not raised.value.charge and backend.blocked()  # the runtime pauses the stage, uncharged
    assert sum(answered_200(openai_server).values()) == 3

    outage["on"] = False
    await asyncio.wait_for(raised.value.wait(), 2)  # as the stage runtime waits
    before = openai_server.request_count
    summary = await asyncio.wait_for(backend.summarize(document, sentences=2), 10)

    answered = answered_200(openai_server)
    assert set(answered.values()) == {1}  # the three sections done before the outage were not paid again
    assert summary.meta["cached_calls"] == 3
    again = openai_server.requests[before:]
    assert summary.meta["llm_calls"] == len(again)
    assert len([received for received in again if SECTION.search(system(received))]) == summary.meta["chunks"] - 3


async def test_a_chunk_answered_empty_four_times_fails_the_document_and_a_retry_keeps_the_rest(
    openai_server: FakeOpenAI, backend_for: Factory
) -> None:
    openai_server.script(Reply.ok(), *[Reply.empty()] * 4)
    backend = backend_for(openai_max_input_chars=1000, openai_map_concurrency=1, retry_base_seconds=0.01)
    document = long_document(5_000)

    with pytest.raises(TransientError, match="empty"):
        await backend.summarize(document, sentences=2)
    assert [k for k, calls in map_calls(openai_server).items() for _ in calls] == [1, 2, 2, 2, 2]  # 1 + 3 retries

    before = openai_server.request_count
    summary = await backend.summarize(document, sentences=2)
    again = openai_server.requests[before:]
    assert summary.meta["cached_calls"] == 1 and summary.meta["llm_calls"] == len(again)
    assert len([received for received in again if SECTION.search(system(received))]) == summary.meta["chunks"] - 1


async def test_a_chunk_the_llm_refuses_fails_the_document_at_once(openai_server: FakeOpenAI,
                                                                  backend_for: Factory) -> None:
    openai_server.script(Reply.ok(), Reply.error(400))
    backend = backend_for(openai_max_input_chars=1000, openai_map_concurrency=1)

    with pytest.raises(PermanentError, match="400"):
        await backend.summarize(long_document(5_000), sentences=2)
    assert openai_server.request_count == 2

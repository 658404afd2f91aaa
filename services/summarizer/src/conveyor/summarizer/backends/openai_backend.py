"""Abstractive summaries from OpenAI-compatible chat APIs (OpenAI, vLLM, Ollama...).

The LLM is sent every block of the document but boilerplate. A text that fits in one call
(CONVEYOR_OPENAI_MAX_INPUT_CHARS) is one call; a longer one is summarized by map-reduce over
chunks of that size (mapreduce.py), at most CONVEYOR_OPENAI_MAP_CONCURRENCY calls of it at once.

Endpoints are tried in order: the primary (CONVEYOR_OPENAI_BASE_URL), then each fallback while the
ones before it are down. Each endpoint has its own circuit breaker and pace, and its failures
are classified as `conveyor.openai_endpoints` says: the endpoint failing or rate limiting is
waited out by the stage runtime without charging the record, the request being refused is a
PermanentError, an unusable answer a TransientError.

A single call raises those to the stage runtime. The calls of a map-reduce wait out outages and
429s themselves, one by one, so the chunks already done are kept; only when every endpoint's
circuit is open is the outage raised, for the runtime to pause the stage. Their answers stay in a
small in-process cache, so the record's next attempt does not pay again for its finished chunks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import punkt
from openai.types.chat import ChatCompletion

from conveyor.breakers import Breakers, DependencyUnavailable, first_usable
from conveyor.document import Document
from conveyor.errors import TransientError
from conveyor.kafka.backoff import backoff_delay
from conveyor.metrics import LLM_LATENCY, LLM_TOKENS
from conveyor.openai_endpoints import Endpoint, open_endpoint, paced_call
from conveyor.settings import Settings
from conveyor.usage import charge

from .base import Summary, SummarizerBackend
from .chunks import SEPARATOR, chunk_texts
from .mapreduce import AnswerCache, Flight, MapReduce, Prompt, retry_on_its_own, whole_prompt

# Map-reduce answers kept for a record's next attempt: a few long documents' worth, a few MB at most.
CACHE_ENTRIES = 512


@dataclass(frozen=True)
class Answer:
    text: str
    completion: ChatCompletion
    endpoint: Endpoint


@dataclass
class Tally:
    """What one summary cost: the calls completed, their tokens, and answers taken from the cache."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0

    def count(self, completion: ChatCompletion) -> None:
        usage = completion.usage  # None when the server does not say
        self.calls += 1
        self.prompt_tokens += (usage.prompt_tokens or 0) if usage else 0
        self.completion_tokens += (usage.completion_tokens or 0) if usage else 0


def llm_texts(document: Document) -> list[str]:
    """What the LLM reads: every block but boilerplate (navigation, licence text)."""
    return [block.text for block in document.blocks if block.kind != "boilerplate"]


class OpenAIBackend(SummarizerBackend):
    """Chat-completion summaries through the first endpoint that is up."""

    name = "openai"

    def __init__(self, settings: Settings, *, breakers: Breakers | None = None) -> None:
        self._max_input_chars = settings.openai_max_input_chars
        self._map_concurrency = settings.openai_map_concurrency
        self._backoff = functools.partial(backoff_delay, base=settings.retry_base_seconds,
                                          cap=settings.retry_max_seconds)
        self._cache = AnswerCache(CACHE_ENTRIES)
        breakers = breakers or Breakers.from_settings(settings)
        urls = [settings.openai_base_url, *settings.openai_fallback_base_urls]
        self.endpoints = [
            open_endpoint(settings, url, settings.openai_model if index == 0 else
                          settings.openai_fallback_model or settings.openai_model, breakers)
            for index, url in enumerate(urls)
        ]
        self._splitter = punkt.tokenizer_for("english", line_breaks="paragraph", prefixes=True)

    def blocked(self) -> str | None:
        """Every endpoint is down: the summarizer can do nothing until one is back."""
        if all(endpoint.breaker.is_open for endpoint in self.endpoints):
            return ", ".join(endpoint.name for endpoint in self.endpoints)
        return None

    async def summarize(self, document: Document, *, sentences: int) -> Summary:
        texts, tally = llm_texts(document), Tally()
        if len(text := SEPARATOR.join(texts)) <= self._max_input_chars:
            answer = await self._call_any(whole_prompt(text, sentences), tally)
            return self._summary(answer, chunks=1, tally=tally)
        chunks = chunk_texts(texts, self._max_input_chars)
        answer = await self._map_reduce(chunks, sentences, tally)
        return self._summary(answer, chunks=len(chunks), tally=tally)

    async def _map_reduce(self, chunks: list[str], sentences: int, tally: Tally) -> Answer:
        flight = Flight()
        shape = MapReduce(summarize_part=lambda prompt: self._cached_call(prompt, tally, flight),
                          summarize_whole=lambda prompt: self._retried_call(prompt, tally, flight),
                          limit=self._max_input_chars, concurrency=self._map_concurrency)
        return await shape.summary(chunks, sentences)

    def _summary(self, answer: Answer, *, chunks: int, tally: Tally) -> Summary:
        parts = [s.strip() for s in self._splitter.tokenize(answer.text) if s.strip()]
        meta: dict[str, Any] = {
            "model": answer.completion.model or answer.endpoint.model, "endpoint": answer.endpoint.name,
            "chunks": chunks, "llm_calls": tally.calls, "cached_calls": tally.cached,
            "prompt_tokens": tally.prompt_tokens, "completion_tokens": tally.completion_tokens,
        }
        return Summary(text=answer.text, sentences=parts, backend=self.name, meta=meta)

    async def _cached_call(self, prompt: Prompt, tally: Tally, flight: Flight) -> str:
        """A map-reduce part's answer: from the cache when this process has made the call before."""
        for model in dict.fromkeys(endpoint.model for endpoint in self.endpoints):
            cached = self._cache.get(prompt.cache_key(model))
            if cached is not None:
                tally.cached += 1
                return cached
        answer = await self._retried_call(prompt, tally, flight)
        self._cache.put(prompt.cache_key(answer.endpoint.model), answer.text)
        return answer.text

    async def _retried_call(self, prompt: Prompt, tally: Tally, flight: Flight) -> Answer:
        return await retry_on_its_own(lambda: self._call_any(prompt, tally), flight=flight,
                                      blocked=self.blocked, backoff=self._backoff)

    async def _call_any(self, prompt: Prompt, tally: Tally) -> Answer:
        """One call through the first endpoint that takes it."""
        unavailable: DependencyUnavailable | None = None
        for endpoint in self.endpoints:
            if not endpoint.breaker.usable():
                continue
            try:
                return await self._call(endpoint, prompt, tally)
            except DependencyUnavailable as exc:
                if exc.charge:
                    raise
                unavailable = unavailable or exc
                continue  # the next endpoint, if one is up
        raise self._all_unavailable(unavailable)

    def _all_unavailable(self, first: DependencyUnavailable | None) -> DependencyUnavailable:
        """No endpoint took the call: wait for whichever admits one first (after the first
        failure's Retry-After, if it gave one)."""
        if len(self.endpoints) == 1 and first is not None:
            return first
        breakers = [endpoint.breaker for endpoint in self.endpoints]
        names = ", ".join(endpoint.name for endpoint in self.endpoints)
        since = min((b.opened_since for b in breakers if b.opened_since), default=None)
        return DependencyUnavailable(
            names, str(first) if first else f"{names}: circuit open, waiting for a probe to succeed",
            wait=lambda: first_usable(breakers), since=since, retry_after=first.retry_after if first else None)

    async def _call(self, endpoint: Endpoint, prompt: Prompt, tally: Tally) -> Answer:
        """One call, inside the endpoint's pace and breaker."""
        completion = await paced_call(endpoint, lambda: self._complete(endpoint, prompt),
                                      tokens=prompt.estimated_tokens, observe=self._observe)
        _record_usage(completion, estimated=prompt.estimated_tokens)
        tally.count(completion)  # paid for, even if its answer is empty
        return Answer(_answer_text(completion), completion, endpoint)

    def _observe(self, outcome: str, seconds: float) -> None:
        LLM_LATENCY.labels(backend=self.name, outcome=outcome).observe(seconds)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()

    async def _complete(self, endpoint: Endpoint, prompt: Prompt) -> ChatCompletion:
        return await endpoint.client.chat.completions.create(
            model=endpoint.model,
            messages=[
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.text},
            ],
            temperature=0,
            max_tokens=prompt.max_tokens,
        )


def _answer_text(completion: ChatCompletion) -> str:
    """The stripped answer; raise TransientError when the model said nothing."""
    choices = completion.choices or []
    content = (choices[0].message.content or "").strip() if choices else ""
    if not content:
        # Overloaded servers sometimes answer with nothing; another try usually works.
        raise TransientError("LLM returned an empty summary")
    return content


def _record_usage(completion: ChatCompletion, *, estimated: int) -> None:
    """The call's tokens in the metrics and in the tenant's usage (the estimate when the server
    does not say)."""
    usage = completion.usage
    if usage is None:
        charge(estimated)
        return
    LLM_TOKENS.labels(kind="prompt").inc(usage.prompt_tokens or 0)
    LLM_TOKENS.labels(kind="completion").inc(usage.completion_tokens or 0)
    charge((usage.prompt_tokens or 0) + (usage.completion_tokens or 0))

"""Abstractive summaries from OpenAI-compatible chat APIs (OpenAI, vLLM, Ollama...).

Endpoints are tried in order: the primary (CONVEYOR_OPENAI_BASE_URL), then each fallback while the
ones before it are down. Each endpoint has its own circuit breaker and its own pace (calls in
flight learned from 429s, optional per-minute budgets). Failures are classified: the endpoint
failing (connection refused, timeout, 5xx) is `DependencyUnavailable`, which the stage runtime
waits out without charging the record; a 429 is the endpoint's pace, waited out the same way; the
request being refused (other 4xx) is a PermanentError; an unusable answer a TransientError.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import punkt
from openai.types.chat import ChatCompletion

from conveyor.breakers import Breaker, Breakers, DependencyFailure, DependencyUnavailable, first_usable
from conveyor.errors import PermanentError, TransientError
from conveyor.metrics import LLM_LATENCY, LLM_TOKENS
from conveyor.pacing import Pace
from conveyor.settings import Settings
from conveyor.summarizer.text import cut_at_word

from .base import Summary, SummarizerBackend

# Output budget per requested sentence: generous, since the model stops on its own when done.
TOKENS_PER_SENTENCE = 80
CHARACTERS_PER_TOKEN = 4  # a rough estimate, for the tokens-per-minute budget

SYSTEM_PROMPT = (
    "You summarize documents. Reply with a summary of exactly {n} sentence(s) of plain prose, "
    "in the language of the document. No title, no preamble, no lists, no markdown."
)

RETRY_AFTER_CAP_SECONDS = 60.0

# Status codes that say the server is unwell or busy, not that the request is wrong.
_UNAVAILABLE_STATUS = frozenset({408, 409, 425})


class _RateLimited(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"LLM answered 429 (retry after {retry_after}s)")
        self.retry_after = retry_after


@dataclass
class Endpoint:
    """One OpenAI-compatible server with its breaker and pace."""

    name: str  # "llm <host>/<path>": no credentials, safe to log and to show
    model: str
    client: openai.AsyncOpenAI
    breaker: Breaker
    pace: Pace


def endpoint_name(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"llm {parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"


class OpenAIBackend(SummarizerBackend):
    """Chat-completion summaries through the first endpoint that is up."""

    name = "openai"

    def __init__(self, settings: Settings, *, breakers: Breakers | None = None) -> None:
        self._max_input_chars = settings.openai_max_input_chars
        breakers = breakers or Breakers.from_settings(settings)
        urls = [settings.openai_base_url, *settings.openai_fallback_base_urls]
        self.endpoints = [
            self._endpoint(settings, url, settings.openai_model if index == 0 else
                           settings.openai_fallback_model or settings.openai_model, breakers)
            for index, url in enumerate(urls)
        ]
        self._splitter = punkt.tokenizer_for("english", line_breaks="paragraph", prefixes=True)

    @staticmethod
    def _endpoint(settings: Settings, base_url: str | None, model: str, breakers: Breakers) -> Endpoint:
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            timeout=settings.openai_timeout_seconds,
            # Retries are the pipeline's: waiting out a 429 or an outage then holds no slot.
            max_retries=0,
        )
        name = endpoint_name(str(client.base_url))
        pace = Pace(name, max_concurrency=settings.openai_max_concurrency,
                    requests_per_minute=settings.openai_requests_per_minute,
                    tokens_per_minute=settings.openai_tokens_per_minute)
        return Endpoint(name, model, client, breakers[name], pace)

    def blocked(self) -> str | None:
        """Every endpoint is down: the summarizer can do nothing until one is back."""
        if all(endpoint.breaker.is_open for endpoint in self.endpoints):
            return ", ".join(endpoint.name for endpoint in self.endpoints)
        return None

    async def summarize(self, text: str, *, sentences: int) -> Summary:
        prompt, truncated = cut_at_word(text, self._max_input_chars)
        tokens = len(prompt) / CHARACTERS_PER_TOKEN + TOKENS_PER_SENTENCE * sentences
        unavailable: DependencyUnavailable | None = None
        for endpoint in self.endpoints:
            if not endpoint.breaker.usable():
                continue
            try:
                completion, answer = await self._call(endpoint, prompt, sentences, tokens)
            except DependencyUnavailable as exc:
                if exc.charge:
                    raise
                unavailable = unavailable or exc
                continue  # the next endpoint, if one is up
            parts = [s.strip() for s in self._splitter.tokenize(answer) if s.strip()]
            meta: dict[str, Any] = {"model": completion.model or endpoint.model, "input_truncated": truncated,
                                    "endpoint": endpoint.name}
            return Summary(text=answer, sentences=parts, backend=self.name, meta=meta)
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

    async def _call(self, endpoint: Endpoint, prompt: str, sentences: int,
                    tokens: float) -> tuple[ChatCompletion, str]:
        """One call, inside the endpoint's pace and breaker."""
        async with endpoint.pace.slot(tokens=tokens) as level:
            loop = asyncio.get_running_loop()
            started, outcome = loop.time(), "error"
            try:
                async with endpoint.breaker.call():
                    completion = await self._complete(endpoint, prompt, sentences)
                endpoint.pace.succeeded(level=level)
                _record_usage(completion)
                outcome = "ok"
                return completion, _answer_text(completion)
            except _RateLimited as exc:
                outcome = "rate_limited"
                endpoint.pace.rate_limited(exc.retry_after, level=level)
                raise endpoint.breaker.unavailable(f"{endpoint.name} is rate limiting (429)",
                                                   retry_after=exc.retry_after) from None
            finally:
                LLM_LATENCY.labels(backend=self.name, outcome=outcome).observe(loop.time() - started)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()

    async def _complete(self, endpoint: Endpoint, prompt: str, sentences: int) -> ChatCompletion:
        """One chat completion; SDK errors become DependencyFailure, _RateLimited or PermanentError."""
        try:
            return await endpoint.client.chat.completions.create(
                model=endpoint.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT.format(n=sentences)},
                    {"role": "user", "content": prompt},
                ],
                temperature=0,
                max_tokens=TOKENS_PER_SENTENCE * sentences,
            )
        except openai.APIStatusError as exc:
            if exc.status_code == 429:
                raise _RateLimited(_retry_after(exc.response)) from exc
            if exc.status_code in _UNAVAILABLE_STATUS or exc.status_code >= 500:
                raise DependencyFailure(f"{endpoint.name} answered HTTP {exc.status_code}",
                                        retry_after=_retry_after(exc.response)) from exc
            raise PermanentError(f"LLM rejected the request with HTTP {exc.status_code}: {exc.message}") from exc
        except openai.APITimeoutError as exc:
            raise DependencyFailure(f"{endpoint.name} timed out") from exc
        except openai.APIConnectionError as exc:
            raise DependencyFailure(f"cannot reach {endpoint.name}: {type(exc.__cause__ or exc).__name__}") from exc
        except openai.OpenAIError as exc:  # malformed answers and other SDK-side failures
            raise TransientError(f"LLM call failed: {exc}") from exc


def _retry_after(response: httpx2.Response) -> float | None:
    """Seconds the server asked to wait (Retry-After in seconds), capped; None when it did not say."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def _answer_text(completion: ChatCompletion) -> str:
    """The stripped answer; raise TransientError when the model said nothing."""
    choices = completion.choices or []
    content = (choices[0].message.content or "").strip() if choices else ""
    if not content:
        # Overloaded servers sometimes answer with nothing; another try usually works.
        raise TransientError("LLM returned an empty summary")
    return content


def _record_usage(completion: ChatCompletion) -> None:
    usage = completion.usage
    if usage is not None:
        LLM_TOKENS.labels(kind="prompt").inc(usage.prompt_tokens or 0)
        LLM_TOKENS.labels(kind="completion").inc(usage.completion_tokens or 0)

"""Abstractive summaries from an OpenAI-compatible chat API (OpenAI, vLLM, Ollama...).

The SDK retries timeouts, 429 and 5xx itself (jittered backoff, honouring Retry-After). What is
left after its retries becomes a TransientError (the pipeline retries later, then dead-letters) or,
for requests the server rejects as invalid, a PermanentError. A circuit breaker stops calling a
server that keeps failing, and a semaphore caps the requests in flight from this process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2
import openai
import punkt
from openai.types.chat import ChatCompletion

from conveyor.errors import PermanentError, TransientError
from conveyor.kafka.backoff import backoff_delay
from conveyor.metrics import LLM_CIRCUIT_OPEN, LLM_LATENCY, LLM_RATE_LIMITED, LLM_TOKENS
from conveyor.settings import Settings

from .base import Summary, SummarizerBackend

# Calls rejected while the circuit is open still use up delivery attempts, so the open window
# (CONVEYOR_OPENAI_CIRCUIT_OPEN_SECONDS) stays short next to the pipeline's retry budget.
# Output budget per requested sentence: generous, since the model stops on its own when done.
TOKENS_PER_SENTENCE = 80

SYSTEM_PROMPT = (
    "You summarize documents. Reply with a summary of exactly {n} sentence(s) of plain prose, "
    "in the language of the document. No title, no preamble, no lists, no markdown."
)

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 8.0
RETRY_AFTER_CAP_SECONDS = 60.0

# Status codes that say the server is unwell or busy, not that the request is wrong.
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class CircuitBreaker:
    """Opens after `failures` consecutive failures, rejects calls for `open_seconds`, then lets
    one trial call through (half-open): success closes it, failure opens it again."""

    def __init__(self, failures: int, open_seconds: float) -> None:
        self.failures = failures
        self.open_seconds = open_seconds
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def before_call(self) -> None:
        """Raise TransientError while open; in half-open state admit a single trial call."""
        if self._opened_at is None:
            return
        remaining = self._opened_at + self.open_seconds - time.monotonic()
        if remaining > 0 or self._probing:
            raise TransientError(
                f"LLM circuit breaker open after {self._consecutive} consecutive failures "
                f"(retry in {max(remaining, 0):.1f}s)"
            )
        self._probing = True

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False
        LLM_CIRCUIT_OPEN.set(0)

    def record_failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = time.monotonic()
            LLM_CIRCUIT_OPEN.set(1)

    def record_neutral(self) -> None:
        """A call that says nothing about server health (the request itself was invalid)."""
        self._probing = False


async def _count_rate_limits(response: httpx2.Response) -> None:
    # An httpx2 response hook sees every HTTP answer, including those the SDK retries away.
    if response.status_code == 429:
        LLM_RATE_LIMITED.inc()


class OpenAIBackend(SummarizerBackend):
    """Chat-completion summaries with client-side concurrency limit, metrics and circuit breaker."""

    name = "openai"

    def __init__(self, settings: Settings, *, circuit: CircuitBreaker | None = None) -> None:
        self._model = settings.openai_model
        self._max_input_chars = settings.openai_max_input_chars
        self._client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            timeout=settings.openai_timeout_seconds,
            # Retries are ours (summarize), so that waiting out a 429 or a 5xx holds no call slot.
            max_retries=0,
            # DefaultAsyncHttpxClient keeps the SDK's connection limits; we only add the hook.
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [_count_rate_limits]}),
        )
        self._slots = asyncio.Semaphore(settings.openai_max_concurrency)
        self._max_retries = settings.openai_max_retries
        self.circuit = circuit or CircuitBreaker(
            # Calls in flight fail together when the server blips; needing more consecutive
            # failures than can be in flight at once keeps one burst from opening the circuit.
            failures=settings.openai_circuit_failures,
            open_seconds=settings.openai_circuit_open_seconds,
        )
        self._splitter = punkt.tokenizer_for("english", line_breaks="paragraph", prefixes=True)

    async def summarize(self, text: str, *, sentences: int) -> Summary:
        """Up to CONVEYOR_OPENAI_MAX_RETRIES retries of transient failures, each after the
        server's Retry-After (or a jittered backoff), waited with no call slot held."""
        prompt, truncated = _truncate(text, self._max_input_chars)
        for retry in range(1, self._max_retries + 2):
            try:
                completion, answer = await self._call(prompt, sentences)
                break
            except TransientError as exc:
                if retry > self._max_retries or self.circuit.is_open:
                    raise
                retry_after = getattr(exc, "retry_after", None)
                await asyncio.sleep(retry_after if retry_after is not None
                                    else backoff_delay(retry, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS))
        parts = [s.strip() for s in self._splitter.tokenize(answer) if s.strip()]
        meta: dict[str, Any] = {"model": completion.model or self._model, "input_truncated": truncated}
        return Summary(text=answer, sentences=parts, backend=self.name, meta=meta)

    async def _call(self, prompt: str, sentences: int) -> tuple[ChatCompletion, str]:
        """One call, inside a slot and the circuit breaker."""
        async with self._slots:
            self.circuit.before_call()
            started = time.perf_counter()
            outcome = "error"
            try:
                completion = await self._complete(prompt, sentences)
                _record_usage(completion)
                answer = _answer_text(completion)
            except TransientError:
                self.circuit.record_failure()
                raise
            except BaseException:
                # Invalid requests and cancellations say nothing about the server's health.
                self.circuit.record_neutral()
                raise
            else:
                self.circuit.record_success()
                outcome = "ok"
            finally:
                LLM_LATENCY.labels(backend=self.name, outcome=outcome).observe(time.perf_counter() - started)
        return completion, answer

    async def close(self) -> None:
        await self._client.close()

    async def _complete(self, prompt: str, sentences: int) -> ChatCompletion:
        """One chat completion; SDK errors left after its retries become Transient/PermanentError."""
        try:
            return await self._client.chat.completions.create(
                model=self._model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT.format(n=sentences)},
                    {"role": "user", "content": prompt},
                ],
                temperature=0,
                max_tokens=TOKENS_PER_SENTENCE * sentences,
            )
        except openai.APIStatusError as exc:
            if exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500:
                error = TransientError(f"LLM answered HTTP {exc.status_code}: {exc.message}")
                error.retry_after = _retry_after(exc.response)  # type: ignore[attr-defined]
                raise error from exc
            raise PermanentError(f"LLM rejected the request with HTTP {exc.status_code}: {exc.message}") from exc
        except openai.APITimeoutError as exc:
            raise TransientError("LLM request timed out") from exc
        except openai.APIConnectionError as exc:
            raise TransientError(f"cannot reach the LLM: {exc}") from exc
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


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` characters, cut at a word boundary when one is near the end."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ", max(0, limit - 200))
    return (cut[:space] if space > 0 else cut), True

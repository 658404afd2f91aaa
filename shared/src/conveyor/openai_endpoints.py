"""Calls to OpenAI-compatible servers (OpenAI, vLLM, Ollama, TEI...), for the stages that make
them: the summarizer's chat completions and the embedder's embeddings.

Each endpoint has its own circuit breaker and pace (calls in flight learned from 429s, optional
per-minute budgets). A call's failure is classified for the stage runtime: the endpoint failing
(connection refused, timeout, 5xx, 408/409/425) is a `DependencyFailure` its breaker counts; a 429
is the endpoint's pace, raised as `DependencyUnavailable` (waited out, never charged to the
record); the request being refused (other 4xx) is a `PermanentError`; anything else the SDK
raises, a `TransientError`. The SDK's own retries are off: waiting is the pipeline's, so a
record that waits holds no call slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx2
import openai

from conveyor.breakers import Breaker, Breakers, DependencyFailure
from conveyor.errors import PermanentError, TransientError
from conveyor.pacing import Pace
from conveyor.settings import Settings

RETRY_AFTER_CAP_SECONDS = 60.0
# Status codes that say the server is unwell or busy, not that the request is wrong.
_UNAVAILABLE_STATUS = frozenset({408, 409, 425})

T = TypeVar("T")


class RateLimited(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"answered 429 (retry after {retry_after}s)")
        self.retry_after = retry_after


@dataclass
class Endpoint:
    """One OpenAI-compatible server with its breaker and pace."""

    name: str  # "<kind> <host>/<path>": no credentials, safe to log and to show
    model: str
    client: openai.AsyncOpenAI
    breaker: Breaker
    pace: Pace


def endpoint_name(base_url: str, kind: str = "llm") -> str:
    parts = urlsplit(base_url)
    return f"{kind} {parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"


def open_endpoint(settings: Settings, base_url: str | None, model: str, breakers: Breakers, *,
                  kind: str = "llm") -> Endpoint:
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=settings.openai_timeout_seconds,
        max_retries=0,  # retries are the pipeline's (see above)
    )
    name = endpoint_name(str(client.base_url), kind)
    pace = Pace(name, max_concurrency=settings.openai_max_concurrency,
                requests_per_minute=settings.openai_requests_per_minute,
                tokens_per_minute=settings.openai_tokens_per_minute)
    return Endpoint(name, model, client, breakers[name], pace)


async def paced_call(endpoint: Endpoint, request: Callable[[], Awaitable[T]], *, tokens: int,
                     observe: Callable[[str, float], None] | None = None) -> T:
    """One request inside the endpoint's pace and breaker, its failure classified; `observe`
    gets the outcome (ok, rate_limited, error) and the seconds it took."""
    async with endpoint.pace.slot(tokens=tokens) as level:
        loop = asyncio.get_running_loop()
        started, outcome = loop.time(), "error"
        try:
            async with endpoint.breaker.call():
                result = await classified(endpoint.name, request)
            endpoint.pace.succeeded(level=level)
            outcome = "ok"
            return result
        except RateLimited as exc:
            outcome = "rate_limited"
            endpoint.pace.rate_limited(exc.retry_after, level=level)
            raise endpoint.breaker.unavailable(f"{endpoint.name} is rate limiting (429)",
                                               retry_after=exc.retry_after) from None
        finally:
            if observe is not None:
                observe(outcome, loop.time() - started)


async def classified(name: str, request: Callable[[], Awaitable[T]]) -> T:
    """The request's result; SDK errors become DependencyFailure, RateLimited, PermanentError or
    TransientError."""
    try:
        return await request()
    except openai.APIStatusError as exc:
        if exc.status_code == 429:
            raise RateLimited(retry_after(exc.response)) from exc
        if exc.status_code in _UNAVAILABLE_STATUS or exc.status_code >= 500:
            raise DependencyFailure(f"{name} answered HTTP {exc.status_code}",
                                    retry_after=retry_after(exc.response)) from exc
        raise PermanentError(f"{name} rejected the request with HTTP {exc.status_code}: {exc.message}") from exc
    except openai.APITimeoutError as exc:
        raise DependencyFailure(f"{name} timed out") from exc
    except openai.APIConnectionError as exc:
        raise DependencyFailure(f"cannot reach {name}: {type(exc.__cause__ or exc).__name__}") from exc
    except openai.OpenAIError as exc:  # malformed answers and other SDK-side failures
        raise TransientError(f"{name} call failed: {exc}") from exc


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds the server asked to wait (Retry-After in seconds), capped; None when it did not say."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)

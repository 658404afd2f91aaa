"""Shared by the benchmarks of the summarizer's openai backend against the repo's fake
OpenAI-compatible server (tests/fakes/openai_server.py): the worker's settings, the jobs, the
server's answer latencies, and a server that is stopped whatever happens."""

from __future__ import annotations

import math
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from documents import english_text  # noqa: E402
from fakes.openai_server import FakeOpenAI, Received, Reply  # noqa: E402

from conveyor.events import Event, Payload  # noqa: E402


def summarizer_env(url: str, *, concurrency: int, **overrides: str) -> dict[str, str]:
    """The summarizer worker on the openai backend, `concurrency` LLM calls in flight at most."""
    return {"CONVEYOR_SUMMARIZER_BACKEND": "openai", "CONVEYOR_OPENAI_BASE_URL": url,
            "CONVEYOR_OPENAI_API_KEY": "bench", "CONVEYOR_OPENAI_MAX_CONCURRENCY": str(concurrency),
            "CONVEYOR_OPENAI_TIMEOUT_SECONDS": "60", "CONVEYOR_STAGE_TIMEOUT_SECONDS": "600",
            "CONVEYOR_MAX_IN_FLIGHT": "256", "CONVEYOR_CONCURRENCY": "64", **overrides}


def summarizer_jobs(count: int, *, sentences: int = 8) -> list[Event]:
    """`count` summarizer events (fewer if two seeds draw the same text): each prompt is unique."""
    texts = {english_text(seed=i, sentences=sentences): uuid.uuid4().hex for i in range(count)}
    return [Event(job_id=job, user_id="bench", stage="summarizer", payload=Payload(text=text))
            for text, job in texts.items()]


def lognormal_latency(seed: int, *, median: float, sigma: float) -> Callable[[], float]:
    """Seconds a successful answer takes: log-normal with this median (sigma 0: always the median)."""
    rng = random.Random(seed)
    return lambda: median * rng.lognormvariate(0, sigma) if sigma else median


def lognormal_mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma ** 2 / 2)


def answer_latencies(fake: FakeOpenAI, status: int = 200) -> list[float]:
    """Seconds from arrival to answer, as the server saw them, of its answers with `status`."""
    # The request and its answer are recorded with the same body object.
    arrived = {id(received.body): received.at for received in fake.requests}
    return [answered.at - arrived[id(answered.body)] for answered, code in fake.answers if code == status]


@contextmanager
def serving(policy: Callable[[Received], Reply] | None = None) -> Iterator[FakeOpenAI]:
    """A running fake OpenAI server answering every request by `policy` (settable later as
    `.fallback`); stopped on the way out."""
    fake = FakeOpenAI()
    fake.fallback = policy
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


__all__ = ["FakeOpenAI", "Received", "Reply", "answer_latencies", "lognormal_latency", "lognormal_mean",
           "serving", "summarizer_env", "summarizer_jobs"]

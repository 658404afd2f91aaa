"""The pipeline with the `openai` summarizer backend against a local OpenAI-compatible server
that answers 429, 500 and too slowly: every job completes, none is lost or dead-lettered."""

from __future__ import annotations

import re

import httpx
import pytest

from conveyor.cli.embedded_broker import free_port
from documents import english_text
from fakes.openai_server import FakeOpenAI, Reply
from pipeline_harness import Pipeline

pytestmark = pytest.mark.slow


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if re.match(rf"{name}(\{{|\s)", line))


def test_jobs_complete_through_429_500_and_timeouts(broker: str, tmp_path, openai_server: FakeOpenAI) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_SUMMARIZER_BACKEND": "openai",
        "CONVEYOR_OPENAI_BASE_URL": openai_server.url,
        "CONVEYOR_OPENAI_TIMEOUT_SECONDS": "1",
        "CONVEYOR_MAX_ATTEMPTS": "6",
    })
    pipeline.start_gateway()
    metrics_port = free_port()  # picked once the gateway holds its port, so it cannot be the same
    pipeline.start_worker("extractor")
    pipeline.start_worker("summarizer", env={"CONVEYOR_METRICS_PORT": str(metrics_port)})
    pipeline.start_worker("notifier")
    openai_server.script(
        Reply.rate_limited(0.2), Reply.error(500), Reply.slow(2.5), Reply.rate_limited(0.1),
        Reply.error(503), Reply.error(502), Reply.slow(2.5), Reply.slow(2.5),
    )
    try:
        texts = {pipeline.submit(english_text(seed=700 + i, sentences=10)): english_text(seed=700 + i, sentences=10)
                 for i in range(12)}

        done = pipeline.wait_for(list(texts), timeout=180)

        assert len(done) == 12
        for job_id, job in done.items():
            assert job["summary"] and job["summary"] in texts[job_id]  # the server echoes leading sentences
            assert job["meta"]["backend"] == "openai"
        assert openai_server.request_count >= 12 + 8
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert metric(scraped, "conveyor_llm_rate_limited_total") >= 2
        assert metric(scraped, "conveyor_llm_tokens_total") > 0
        # Each injected fault was waited out (the endpoint's, not the record's), never a lost job.
        assert metric(scraped, "conveyor_events_dead_lettered_total") == 0
    finally:
        pipeline.stop_all()

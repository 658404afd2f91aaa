"""One trace follows a job from POST /submit through every topic to the notifier.

The gateway app and the three stage workers run in this test's event loop against the real broker,
so one in-memory exporter sees every span; the context crosses each hop only through the Kafka
`traceparent` header, exactly as between processes.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import httpx
from opentelemetry.trace import SpanKind

from conveyor import tracing
from conveyor.extractor.handler import build_stage as build_extractor
from conveyor.gateway.app import create_app
from conveyor.notifier.handler import build_stage as build_notifier
from conveyor.summarizer.handler import build_stage as build_summarizer
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.stage import StageWorker
from conveyor.settings import Settings
from conveyor.credentials import add_key
from conveyor.stores import open_blob_store, open_job_store
from conveyor.topics import STAGES, all_topics
from documents import english_text


async def test_one_trace_spans_gateway_and_every_stage(broker: str, tmp_path) -> None:
    exporter = tracing.install_in_memory_exporter()
    settings = Settings(bootstrap_servers=broker, topic_prefix=f"tr{uuid.uuid4().hex[:6]}", home=tmp_path,
                        webhook_secret="trace-test-secret",
                        partitions=2, session_timeout_ms=6000, lag_interval_seconds=0, textrank_processes=1)
    await ensure_topics(settings, all_topics(settings.topic_prefix))
    key, _ = add_key(tmp_path / "api-keys.json", "default")
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        store = open_job_store(settings)
        stack.push_async_callback(store.close)
        blobs = open_blob_store(settings)
        builders = (build_extractor, build_summarizer, build_notifier)
        workers = [StageWorker(build(settings, store, blobs, stack), settings, store) for build in builders]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                             headers={"authorization": f"Bearer {key}"}) as client:
                    answer = await client.post("/submit", json={"user_id": "u1", "content": english_text(seed=9)})
                    job_id = answer.json()["job_id"]
                    for _ in range(600):
                        if (await client.get(f"/jobs/{job_id}")).json()["status"] == "completed":
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError("job did not complete")
                spans = list(exporter.get_finished_spans())
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.gather(*tasks)

    request = next(s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /submit")
    trace_id = request.context.trace_id
    job_spans = [s for s in spans if s.context.trace_id == trace_id]
    names = [s.name for s in job_spans]
    for stage in STAGES:
        assert f"{stage} process" in names, names
    consumers = {s.name: s for s in job_spans if s.kind == SpanKind.CONSUMER}
    producers = {s.context.span_id: s for s in job_spans if s.kind == SpanKind.PRODUCER}
    # Each stage's span is the child of the publish span that sent its record.
    for stage in STAGES:
        parent = producers[consumers[f"{stage} process"].parent.span_id]
        assert parent.attributes["conveyor.job_id"] == job_id
    assert consumers["notifier process"].attributes["conveyor.job_id"] == job_id

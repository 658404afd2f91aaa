"""The stage runtime on the real broker: a record that never finishes holds back nobody else, and
records that take longer than the group's poll interval cause no rebalance and no duplicate."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from conveyor.events import Event, Payload
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_producer
from conveyor.kafka.stage import Stage, StageWorker
from conveyor.settings import Settings
from conveyor.stores.base import JobRecord
from conveyor.stores.sqlite_store import SqliteJobStore
from conveyor.topics import dlq_topic, input_topic
from documents import english_text
from pipeline_harness import Pipeline
from webhook_receiver import WebhookReceiver

SECRET = "runtime-test-secret"


class BlackHole:
    """Accepts connections and never answers: a callback host that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.first_request_at: float | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.first_request_at = self.first_request_at or time.monotonic()
            self.connections.append(conn)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.mark.slow
def test_a_callback_that_never_answers_delays_no_other_webhook(broker: str, tmp_path: Path) -> None:
    hole = BlackHole()
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true", "CONVEYOR_WEBHOOK_SECRET": SECRET,
        "CONVEYOR_WEBHOOK_TIMEOUT_SECONDS": "60", "CONVEYOR_PARTITIONS": "1",
    })
    try:
        with WebhookReceiver(SECRET) as receiver:
            pipeline.start_gateway()
            pipeline.start_worker("extractor")
            pipeline.start_worker("summarizer")
            hanging = pipeline.submit(english_text(seed=1, sentences=6), callback_url=hole.url)
            jobs = [pipeline.submit(english_text(seed=10 + i, sentences=6), callback_url=receiver.url)
                    for i in range(50)]
            # Everything waits on the notify topic (one partition, the hanging job first) ...
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = [pipeline.job(j)["stages"].get("summarizer", {}).get("state") for j in [hanging, *jobs]]
                if all(s == "done" for s in states):
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the summarizer did not finish the jobs")
            # ... then one notifier takes them all.
            pipeline.start_worker("notifier")
            deadline = time.monotonic() + 60
            while (hole.first_request_at is None or len(receiver.deliveries) < 50) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hole.first_request_at is not None, "the hanging callback was called"
            assert len(receiver.deliveries) == 50
            all_delivered_at = time.monotonic()
            assert all_delivered_at - hole.first_request_at < 5.0
            assert hanging not in receiver.deliveries
    finally:
        pipeline.stop_all()
        hole.close()


@pytest.mark.slow
async def test_records_longer_than_the_poll_interval_cause_no_rebalance_and_no_duplicate(
        broker: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(bootstrap_servers=broker, topic_prefix=prefix, home=tmp_path, partitions=2,
                        max_poll_interval_ms=1500, session_timeout_ms=6000, concurrency=4,
                        commit_interval_seconds=0.2)
    topic = input_topic("extractor", prefix)
    await ensure_topics(settings, [topic, dlq_topic("extractor", prefix), input_topic("summarizer", prefix)])
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    calls: dict[str, int] = {}

    async def slow(event: Event) -> Event:
        calls[event.job_id] = calls.get(event.job_id, 0) + 1
        await asyncio.sleep(4.0)  # well past the 1.5 s poll interval
        return event.next()

    producer = make_producer(settings)
    await producer.start()
    jobs = [f"job-{i}" for i in range(8)]
    for job in jobs:
        await store.create(JobRecord(job_id=job, user_id="u"))
        event = Event(job_id=job, user_id="u", stage="extractor", payload=Payload(text="x"))
        await producer.send_and_wait(topic, event.to_bytes(), key=job.encode())
    await producer.stop()

    worker = StageWorker(Stage("extractor", slow), settings, store)
    revocations: list[object] = []
    release = worker._release

    async def counted_release(revoked):  # type: ignore[no-untyped-def]
        if revoked:  # joining the group revokes the empty set first
            revocations.append(revoked)
        await release(revoked)

    worker._release = counted_release  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = [await store.get(job) for job in jobs]
            if all(r and r.stages.get("extractor") and r.stages["extractor"].state == "done" for r in records):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail(f"not all records finished: {calls}")
        await asyncio.sleep(1.0)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await store.close()
    assert calls == {job: 1 for job in jobs}, "no record ran twice"
    assert revocations == [], "the group never took the partitions away"

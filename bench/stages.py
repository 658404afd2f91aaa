"""Shared by the benchmarks that run real stage processes: start them on fresh topics, feed one
stage's topic, and wait until each job is done or failed at a stage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.events import Event
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_producer
from conveyor.settings import Settings
from conveyor.stores.base import JobRecord, StageState
from conveyor.stores.sqlite_store import SqliteJobStore
from conveyor.topics import STAGES, dlq_topic, input_topic


@dataclass
class StageRun:
    bootstrap: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    # The command line of one stage's worker process.
    worker_argv: Callable[[str], list[str]] = lambda stage: [sys.executable, "-m", "conveyor.cli.main", "worker", stage]
    prefix: str = field(default_factory=lambda: f"b{uuid.uuid4().hex[:8]}")
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix, home=self.home, partitions=6)

    async def start(self, *stages: str) -> None:
        await ensure_topics(self.settings, [t for s in STAGES for t in (input_topic(s, self.prefix),
                                                                        dlq_topic(s, self.prefix))])
        env = {**os.environ, "CONVEYOR_BOOTSTRAP_SERVERS": self.bootstrap, "CONVEYOR_TOPIC_PREFIX": self.prefix,
               "CONVEYOR_HOME": str(self.home), "CONVEYOR_PARTITIONS": "6", "CONVEYOR_LOG_LEVEL": "WARNING",
               **self.env}
        self.workers = [subprocess.Popen(self.worker_argv(stage), env=env) for stage in stages]
        await asyncio.sleep(8)  # every group joined before the clock starts

    async def send(self, events: list[Event]) -> float:
        """Record the jobs, send their events; returns the time the first send started."""
        store = SqliteJobStore(self.settings.resolved_sqlite_path())
        for event in events:
            await store.create(JobRecord(job_id=event.job_id, user_id=event.user_id))
        await store.close()
        producer = make_producer(self.settings)
        await producer.start()
        started = time.time()
        await asyncio.gather(*[await producer.send(input_topic(e.stage, self.prefix), e.to_bytes(),
                                                   key=e.job_id.encode()) for e in events])
        await producer.stop()
        return started

    async def wait(self, job_ids: list[str], stage: str, *, timeout: float) -> dict[str, JobRecord]:
        """Every job's record once its `stage` is done or failed."""
        store = SqliteJobStore(self.settings.resolved_sqlite_path())
        finished: dict[str, JobRecord] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(finished) < len(job_ids):
                if time.monotonic() > deadline or any(w.poll() is not None for w in self.workers):
                    raise SystemExit(f"run stopped with {len(job_ids) - len(finished)} jobs unfinished")
                for job_id in [j for j in job_ids if j not in finished][:300]:
                    record = await store.get(job_id)
                    progress = record.stages.get(stage) if record else None
                    if progress and progress.state in (StageState.done, StageState.failed):
                        finished[job_id] = record  # type: ignore[assignment]
                await asyncio.sleep(0.2)
        finally:
            await store.close()
        return finished

    def stop(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.wait(60)

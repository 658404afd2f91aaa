"""Shared by the benchmarks that run real stage processes: start them on fresh topics, feed one
stage's topic, wait until each job is done or failed at a stage, count dead letters; and `run`,
which runs a benchmark's main so that Ctrl-C or SIGTERM still stops every process it started."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from conveyor.events import Event
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_consumer, make_producer
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
    # When set, each worker's output goes to <log_dir>/<stage>.log instead of this terminal.
    log_dir: Path | None = None

    @property
    def settings(self) -> Settings:
        return Settings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix, home=self.home, partitions=6)

    async def start(self, *stages: str) -> None:
        await ensure_topics(self.settings, [t for s in STAGES for t in (input_topic(s, self.prefix),
                                                                        dlq_topic(s, self.prefix))])
        env = {**os.environ, "CONVEYOR_BOOTSTRAP_SERVERS": self.bootstrap, "CONVEYOR_TOPIC_PREFIX": self.prefix,
               "CONVEYOR_HOME": str(self.home), "CONVEYOR_PARTITIONS": "6", "CONVEYOR_WEBHOOK_SECRET": "bench-secret", "CONVEYOR_LOG_LEVEL": "WARNING",
               **self.env}
        for stage in stages:
            output = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = open(self.log_dir / f"{stage}.log", "ab")  # noqa: SIM115 - the child holds it
            try:
                self.workers.append(subprocess.Popen(self.worker_argv(stage), env=env, stdout=output,
                                                     stderr=subprocess.STDOUT if output else None))
            finally:
                if output is not None:
                    output.close()
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
                unfinished = [j for j in job_ids if j not in finished][:300]
                # Read together: one transaction, so the polling barely touches the stages' database.
                for job_id, record in zip(unfinished, await asyncio.gather(*map(store.get, unfinished))):
                    progress = record.stages.get(stage) if record else None
                    if progress and progress.state in (StageState.done, StageState.failed):
                        finished[job_id] = record  # type: ignore[assignment]
                await asyncio.sleep(0.2)
        finally:
            await store.close()
        return finished

    async def dead_letters(self, stage: str) -> int:
        """Records in `stage`'s dead-letter topic."""
        consumer = make_consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            topic = dlq_topic(stage, self.prefix)
            partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            return sum(ends[tp] - starts[tp] for tp in partitions)
        finally:
            await consumer.stop()

    def stop(self) -> None:
        """Stop every worker started (SIGTERM, then SIGKILL after 60 s); safe to call twice."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    """The topic's partitions, once the consumer's metadata knows the topic."""
    deadline = time.monotonic() + 30
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise SystemExit(f"no metadata for topic {topic}")
        await consumer.topics()  # refreshes the metadata
        await asyncio.sleep(0.2)
    return partitions


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a benchmark's async main. Ctrl-C and SIGTERM cancel it, so its `finally` blocks stop
    the processes and servers it started; the exit status is then 130."""
    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main()

    try:
        asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process it started is stopped", file=sys.stderr)
        raise SystemExit(130) from None

"""The consumer loop every stage runs: one place for delivery semantics.

For each fetched batch the records are handled concurrently; a record counts as done once its
output (or its dead letter) is acknowledged by the broker. Only then is its offset committed, and
only up to the first record that is not done, so a crash, a shutdown or a rebalance can redeliver
work but never lose it. Handlers are idempotent by job id, which makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from pydantic import ValidationError

from conveyor import metrics, tracing
from conveyor.errors import PermanentError
from conveyor.events import Event
from conveyor.kafka.backoff import backoff_delay
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.dead_letters import dead_letter_for
from conveyor.settings import Settings
from conveyor.stores.base import JobStore, StageState
from conveyor.topics import consumer_group, dlq_topic, input_topic

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[Event | None]]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its name and the pure handler `event -> next event (or None)`."""

    name: str
    handler: Handler
    # Skip records whose stage is already done, for stages with outside effects (webhooks, LLM spend).
    skip_done: bool = False


class _Abandoned(Exception):
    """Shutdown arrived while a record was waiting to retry: leave it uncommitted."""


class _RevokeListener(ConsumerRebalanceListener):
    def __init__(self, worker: "StageWorker") -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # The in-flight batch holds this lock until its offsets are committed.
        async with self.worker.batch_lock:
            log.info("partitions revoked: %s", _names(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))


def _create_series(stage: str) -> None:
    """Export every counter at 0 from the start, so rate() and increase() see the first event."""
    for counter in (metrics.EVENTS_CONSUMED, metrics.EVENTS_RETRIED, metrics.EVENTS_DEAD_LETTERED,
                    metrics.EVENTS_SKIPPED):
        counter.labels(stage)


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)) or "none"


class StageWorker:
    """Runs one stage against Kafka until `stop()`."""

    def __init__(self, stage: Stage, settings: Settings, store: JobStore) -> None:
        self.stage = stage
        self.settings = settings
        self.store = store
        self.topic = input_topic(stage.name, settings.topic_prefix)
        self.dlq = dlq_topic(stage.name, settings.topic_prefix)
        self.group = consumer_group(stage.name, settings.topic_prefix)
        self.batch_lock = asyncio.Lock()
        self.ready = False
        self.last_poll = 0.0
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)
        # Records of one job (same key) run one after another, so a redelivered duplicate sees
        # the first copy's outcome instead of racing it.
        self._job_locks: dict[bytes, tuple[asyncio.Lock, int]] = {}
        _create_series(stage.name)

    def stop(self) -> None:
        """Stop fetching; the current batch finishes (or hands back its records) and commits."""
        self._stopping.set()

    async def run(self) -> None:
        self._producer = make_producer(self.settings)
        self._consumer = make_consumer(self.settings, group_id=self.group)
        await self._producer.start()
        try:
            self._consumer.subscribe([self.topic], listener=_RevokeListener(self))
            await self._consumer.start()
            log.info("%s consuming %s as group %s", self.stage.name, self.topic, self.group)
            while not self._stopping.is_set():
                await self._poll_once()
        finally:
            self.ready = False
            await self._consumer.stop()  # leaves the group so partitions move at once
            await self._producer.stop()
            log.info("%s stopped", self.stage.name)

    async def _poll_once(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=500, max_records=self.settings.batch_size)
        self.last_poll, self.ready = time.monotonic(), True
        if not batches:
            return
        async with self.batch_lock:
            try:
                await self._process_and_commit(batches)
            except KafkaError as exc:
                # The broker failed us mid-batch: rewind to the last commit and try again later.
                log.warning("%s: broker error, rewinding uncommitted records: %s", self.stage.name, exc)
                await self._rewind(list(batches))
                await asyncio.sleep(backoff_delay(1, base=self.settings.retry_base_seconds, cap=5))

    async def _process_and_commit(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        tasks = {tp: [asyncio.create_task(self._guarded(r)) for r in records] for tp, records in batches.items()}
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        rewind: list[TopicPartition] = []
        for tp, record_tasks in tasks.items():
            results = await asyncio.gather(*record_tasks, return_exceptions=True)
            done_upto = None
            for record, result in zip(batches[tp], results):
                if isinstance(result, BaseException):
                    if not isinstance(result, _Abandoned):
                        log.error("%s: record %s[%d]@%d not done: %r", self.stage.name, tp.topic,
                                  tp.partition, record.offset, result)
                    rewind.append(tp)
                    break
                done_upto = record.offset + 1
            if done_upto is not None:
                offsets[tp] = OffsetAndMetadata(done_upto, "")
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except CommitFailedError as exc:
                # The group moved on (rebalance); another member will redo these records.
                log.warning("%s: commit failed, records will be redelivered: %s", self.stage.name, exc)
        if rewind:
            await self._rewind(rewind)

    async def _rewind(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp in partitions:
            if tp not in assigned:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _guarded(self, record: ConsumerRecord) -> None:
        async with self._one_at_a_time(record.key), self._slots:
            metrics.IN_FLIGHT.labels(self.stage.name).inc()
            try:
                await self._handle_record(record)
            finally:
                metrics.IN_FLIGHT.labels(self.stage.name).dec()

    @asynccontextmanager
    async def _one_at_a_time(self, key: bytes | None) -> AsyncIterator[None]:
        """Serialize records of one job; records without a key carry no job and run freely."""
        if key is None:
            yield
            return
        lock, users = self._job_locks.get(key, (asyncio.Lock(), 0))
        self._job_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._job_locks[key]
            if users == 1:
                del self._job_locks[key]
            else:
                self._job_locks[key] = (lock, users - 1)

    async def _handle_record(self, record: ConsumerRecord) -> None:
        """Handle one record to a durable outcome: output produced, skipped, or dead-lettered."""
        stage = self.stage.name
        metrics.EVENTS_CONSUMED.labels(stage).inc()
        try:
            event = Event.from_bytes(record.value or b"")
            if event.stage != stage:
                raise PermanentError(f"event for stage {event.stage!r} arrived on {record.topic}")
        except (ValidationError, PermanentError, UnicodeDecodeError) as exc:
            metrics.EVENTS_FAILED.labels(stage, "DecodeError").inc()
            await self._dead_letter(record, job_id=None, error=exc, attempts=1)
            return

        with tracing.stage_span(stage, job_id=event.job_id, headers=record.headers, topic=record.topic,
                                partition=record.partition, offset=record.offset):
            if self.stage.skip_done and await self._already_done(event.job_id):
                metrics.EVENTS_SKIPPED.labels(stage).inc()
                log.info("%s: job %s already done, skipping redelivery", stage, event.job_id)
                return
            started = time.perf_counter()
            try:
                await self._with_retries(event, record)
            finally:
                metrics.PROCESSING_SECONDS.labels(stage).observe(time.perf_counter() - started)

    async def _with_retries(self, event: Event, record: ConsumerRecord) -> None:
        stage, settings = self.stage.name, self.settings
        attempt = event.attempt
        while True:
            try:
                await self.store.update_stage(event.job_id, stage, StageState.running, attempts=attempt)
                output = await self.stage.handler(event)
                if output is not None:
                    await self._produce(output)
                await self.store.update_stage(event.job_id, stage, StageState.done, attempts=attempt)
                return
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                metrics.EVENTS_FAILED.labels(stage, type(exc).__name__).inc()
                permanent = isinstance(exc, PermanentError)
                if permanent or attempt >= settings.max_attempts:
                    log.warning("%s: job %s failed after %d attempt(s): %s", stage, event.job_id, attempt, exc)
                    await self._dead_letter(record, job_id=event.job_id, error=exc, attempts=attempt)
                    await self.store.update_stage(event.job_id, stage, StageState.failed,
                                                  attempts=attempt, error=f"{type(exc).__name__}: {exc}")
                    return
                delay = backoff_delay(attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds)
                log.info("%s: job %s attempt %d failed (%s); retrying in %.2fs", stage, event.job_id,
                         attempt, exc, delay)
                metrics.EVENTS_RETRIED.labels(stage).inc()
                attempt += 1
                event = event.model_copy(update={"attempt": attempt})
                await self._sleep_unless_stopping(delay)

    async def _sleep_unless_stopping(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except asyncio.TimeoutError:
            return
        raise _Abandoned()

    async def _produce(self, event: Event) -> None:
        assert self._producer is not None
        topic = input_topic(event.stage, self.settings.topic_prefix)
        with tracing.produce_span(topic, job_id=event.job_id):
            event = event.model_copy(update={"trace": tracing.trace_dict()})
            await self._producer.send_and_wait(topic, event.to_bytes(), key=event.job_id.encode(),
                                               headers=tracing.kafka_headers())
        metrics.EVENTS_PRODUCED.labels(self.stage.name, topic).inc()

    async def _dead_letter(self, record: ConsumerRecord, *, job_id: str | None, error: BaseException,
                           attempts: int) -> None:
        assert self._producer is not None
        letter = dead_letter_for(record, stage=self.stage.name, job_id=job_id, error=error, attempts=attempts)
        key = job_id.encode() if job_id else None
        await self._producer.send_and_wait(self.dlq, letter.model_dump_json().encode(), key=key)
        metrics.EVENTS_DEAD_LETTERED.labels(self.stage.name).inc()
        log.warning("%s: dead-lettered %s (%s: %s)", self.stage.name, job_id or "undecodable record",
                    letter.error_type, letter.error[:200])

    async def _already_done(self, job_id: str) -> bool:
        record = await self.store.get(job_id)
        progress = record.stages.get(self.stage.name) if record else None
        return progress is not None and progress.state == StageState.done

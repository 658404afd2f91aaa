"""The consumer loop every stage runs: one place for delivery semantics.

Records flow continuously through a bounded in-flight window: fetching goes on while records are
handled, and when the window is full the worker pauses its partitions (the log holds the rest).
A record counts as done once its output (or its dead letter) is acknowledged by the broker; each
partition's committed position follows the lowest record not yet done, on a short interval. So a
slow or retrying record holds back only its own partition's commit point, never the handling of
other records, and a crash, shutdown or rebalance can redeliver work but never lose it. Handlers
are idempotent by job id, which makes redelivery harmless.

Each attempt is counted in the job store before the handler runs, so a record that kills its
worker is dead-lettered after `max_attempts` instead of being retried forever. Every attempt has a
deadline. Retries wait outside the handler slots; producing an output retries on its own, so a
broker error never re-runs a handler that already succeeded.

An outage is not the record's fault. A handler whose dependency is unavailable raises
`DependencyUnavailable` (its circuit breaker does): the record gives back the attempt, shows as
waiting for that dependency, and waits in the window, holding no handler slot, until the breaker
admits a call again; it is never dead-lettered for it. When a stage says a dependency that every
record needs is down (`Stage.blocked`), the worker also stops fetching: the log holds the work.

A document's erasure is a record like any other, with the same delivery semantics: each stage runs
its `Stage.erase` on it (or nothing) and passes it on; the last stage forgets the versions' records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from conveyor import metrics, tracing, usage
from conveyor.breakers import DependencyUnavailable
from conveyor.errors import PermanentError
from conveyor.events import BlobRef, Event, EventDecodeError, Failure, Payload, utcnow
from conveyor.kafka.backoff import backoff_delay
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.dead_letters import dead_letter_for
from conveyor.kafka.key_locks import KeyLocks
from conveyor.kafka.offsets import PartitionOffsets
from conveyor.settings import Settings
from conveyor.stores import documents
from conveyor.stores.base import JobStore, StageState
from conveyor.stores.records import with_blob
from conveyor.stores.blobs import BlobStore
from conveyor.topics import NOTIFIER, stage_bindings

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[Event | None]]
# How long a revoked partition's running handlers may finish before they are cancelled.
REVOKE_GRACE_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 25.0
FETCH_TIMEOUT_MS = 200
CANCEL_POLL_SECONDS = 1.0  # how soon a running handler learns its job was cancelled
BROKER_RETRY_CAP_SECONDS = 5.0


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its name and the handler `event -> output event (or None)`.

    The handler does not address its output: the runtime sends it to the stage's output binding,
    or, in the pipeline's last stage, completes the job with it (its summary and meta).
    """

    name: str
    handler: Handler
    # Skip records whose stage is already done, for stages with outside effects (webhooks, LLM spend).
    skip_done: bool = False
    # Names the dependency every record of the stage needs while it is down (None: nothing is).
    blocked: Callable[[], str | None] | None = None
    # Completes its jobs itself (the notifier, before it calls back); other last stages leave it to the runtime.
    completes_jobs: bool = False
    # Tell the notifier about a job that fails here, so its callback hears of it (not the notifier's own).
    reports_failures: bool = True
    # Erases what the stage stored of a document (an erasure event); None: it stores nothing.
    erase: Callable[[Event], Awaitable[None]] | None = None


class WorkerDied(Exception):
    """Every attempt at a record started and none finished: it took its worker down each time."""


class DeadlineExceeded(Exception):
    """An attempt ran past CONVEYOR_STAGE_TIMEOUT_SECONDS."""


class JobCancelled(Exception):
    """The job was cancelled while this stage worked on it: the handler was stopped."""


class _Abandoned(Exception):
    """Shutdown arrived while a record waited (to retry, or for the broker): leave it uncommitted."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: StageWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker._release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))


class _StageMetrics:
    """The stage's labelled series, looked up once (and so exported at 0 from the start, for
    rate() and increase() to see the first event)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.consumed = metrics.EVENTS_CONSUMED.labels(stage)
        self.retried = metrics.EVENTS_RETRIED.labels(stage)
        self.dead_lettered = metrics.EVENTS_DEAD_LETTERED.labels(stage)
        self.skipped = metrics.EVENTS_SKIPPED.labels(stage)
        self.processing = metrics.PROCESSING_SECONDS.labels(stage)
        self.in_flight = metrics.IN_FLIGHT.labels(stage)
        self.waiting = metrics.RECORDS_WAITING.labels(stage)
        self._produced: dict[str, Any] = {}

    def produced(self, topic: str) -> Any:
        if topic not in self._produced:
            self._produced[topic] = metrics.EVENTS_PRODUCED.labels(self.stage, topic)
        return self._produced[topic]

    def failed(self, error: str) -> None:
        metrics.EVENTS_FAILED.labels(self.stage, error).inc()


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)) or "none"


class StageWorker:
    """Runs one stage against Kafka until `stop()`.

    `consumer` and `producer` default to real aiokafka clients; tests pass in-memory doubles.
    """

    def __init__(self, stage: Stage, settings: Settings, store: JobStore, *, blobs: BlobStore | None = None,
                 consumer: Any = None, producer: Any = None) -> None:
        self.stage = stage
        self.settings = settings
        self.store = store
        self.blobs = blobs  # a last stage deletes its jobs' blobs as they complete
        self.bindings = stage_bindings(stage.name, settings)
        self.topic, self.dlq, self.group = (self.bindings.input_topic, self.bindings.dlq_topic,
                                            self.bindings.consumer_group)
        self.ready = False
        self.last_poll = time.monotonic()
        self._stopping = asyncio.Event()
        self._consumer = consumer
        self._producer = producer
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._waiting: set[asyncio.Task[None]] = set()  # records waiting to retry, holding no slot
        self._in_flight = 0
        self._handling = 0
        self._handlers: dict[str, asyncio.Future[Event | None]] = {}  # job id -> its running handler
        self._last_progress = time.monotonic()
        # Records of one job (same key) run one after another, so a redelivered duplicate sees
        # the first copy's outcome instead of racing it.
        self._job_locks = KeyLocks()
        self._metrics = _StageMetrics(stage.name)
        self._blocked_by: str | None = None

    # ------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop fetching; running handlers get a grace period, then what is done is committed."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        """Records in the window: being handled or waiting to retry."""
        return self._in_flight

    def alive(self) -> bool:
        """False when the loop is wedged: no fetch, or handlers running with no attempt finishing,
        for longer than CONVEYOR_LIVENESS_STALL_SECONDS."""
        now, stall = time.monotonic(), self.settings.resolved_liveness_stall_seconds()
        if now - self.last_poll > stall:
            return False
        return not (self._handling and now - self._last_progress > stall)

    async def run(self) -> None:
        self._producer = self._producer or make_producer(self.settings)
        self._consumer = self._consumer or make_consumer(
            self.settings, group_id=self.group, max_poll_interval_ms=self.settings.max_poll_interval_ms)
        await self._producer.start()
        background: list[asyncio.Task[None]] = []
        try:
            self._consumer.subscribe([self.topic], listener=_Rebalance(self))
            await self._consumer.start()
            log.info("%s consuming %s as group %s", self.stage.name, self.topic, self.group)
            background += [asyncio.create_task(self._commit_forever()),
                           asyncio.create_task(self._stop_cancelled_forever())]
            while not self._stopping.is_set():
                await self._fetch_once()
        finally:
            self.ready = False
            await self._drain(set(self._tasks), grace=SHUTDOWN_GRACE_SECONDS)
            for task in background:
                task.cancel()
            await self._commit()
            await self._consumer.stop()  # leaves the group so partitions move at once
            await self._producer.stop()
            log.info("%s stopped", self.stage.name)

    # ------------------------------------------------------------------------- the window

    async def _fetch_once(self) -> None:
        room = self.settings.max_in_flight - self._in_flight
        self._apply_backpressure(full=room <= 0 or self._blocked())
        batches = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS,
                                               max_records=max(1, min(room, self.settings.batch_size)))
        self.last_poll, self.ready = time.monotonic(), True
        if not self._handling:
            self._last_progress = self.last_poll
        assigned = self._consumer.assignment()
        for tp, fetched in batches.items():
            if tp not in assigned:
                continue  # revoked while the fetch was answered
            offsets = self._partitions.setdefault(tp, PartitionOffsets())
            for record in fetched:
                offsets.track(record.offset)
                self._start(tp, offsets, record)

    def _blocked(self) -> bool:
        """True while a dependency every record needs is down; logged once per outage."""
        blocked_by = self.stage.blocked() if self.stage.blocked else None
        if blocked_by != self._blocked_by:
            if blocked_by:
                log.warning("%s: %s is unavailable; fetching paused, the log holds the work", self.stage.name, blocked_by)
            else:
                log.info("%s: fetching resumed", self.stage.name)
            self._blocked_by = blocked_by
        return blocked_by is not None

    def _apply_backpressure(self, *, full: bool) -> None:
        """Pause every partition while the window is full; the log holds the rest."""
        paused = self._consumer.paused()
        if full:
            to_pause = self._consumer.assignment() - paused
            if to_pause:
                self._consumer.pause(*to_pause)
        elif paused:
            self._consumer.resume(*paused)

    def _start(self, tp: TopicPartition, offsets: PartitionOffsets, record: ConsumerRecord) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._process(offsets, record))
        self._tasks.setdefault(tp, set()).add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight -= 1
            self._tasks.get(tp, set()).discard(done)
            self._waiting.discard(done)

        task.add_done_callback(finished)

    async def _process(self, offsets: PartitionOffsets, record: ConsumerRecord) -> None:
        """Take one record to a durable outcome. Failures of our own dependencies (job store,
        broker) are not the record's: it waits and tries again, uncharged."""
        failures = 0
        while True:
            try:
                async with self._job_locks.hold(record.key):
                    await self._handle_record(record)
                offsets.finish(record.offset)
                self._last_progress = time.monotonic()
                return
            except _Abandoned:
                return
            except Exception as exc:  # noqa: BLE001 - a dependency failed; the record is not at fault
                failures += 1
                log.warning("%s: record %s[%d]@%d could not be finished (%s: %s); trying again",
                            self.stage.name, record.topic, record.partition, record.offset,
                            type(exc).__name__, exc)
                try:
                    await self._wait(backoff_delay(failures, base=self.settings.retry_base_seconds,
                                                   cap=BROKER_RETRY_CAP_SECONDS))
                except _Abandoned:
                    return

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes partitions away: their waiting records go at once, running handlers
        get a short grace, then what is done is committed and the rest left to the next owner."""
        await self._drain(revoked, grace=REVOKE_GRACE_SECONDS)
        await self._commit(revoked)
        for tp in revoked:
            self._partitions.pop(tp, None)
            self._tasks.pop(tp, None)
        log.info("partitions revoked: %s", _names(revoked))

    async def _drain(self, partitions: set[TopicPartition], *, grace: float) -> None:
        tasks = {t for tp in partitions for t in self._tasks.get(tp, ())}
        for task in tasks & self._waiting:
            task.cancel()
        running = {t for t in tasks if not t.done()}
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning("%s: %d record(s) still running after %.0fs; they will be redelivered",
                            self.stage.name, len(late), grace)

    async def _stop_cancelled_forever(self) -> None:
        """Stop the handlers of jobs cancelled while they run (an LLM call is aborted with them)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            running = list(self._handlers)
            if not running:
                continue
            try:
                cancelled = await self.store.cancelled_jobs(running)
            except Exception as exc:  # noqa: BLE001 - the next round asks again
                log.debug("%s: cannot ask the job store about cancellations: %s", self.stage.name, exc)
                continue
            for job_id in cancelled:
                handler = self._handlers.get(job_id)
                if handler is not None:
                    handler.cancel()

    async def _commit_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_seconds)
            await self._commit()

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        assigned = self._consumer.assignment()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, tracker in self._partitions.items():
            position = tracker.pending_commit()
            if position is not None and tp in assigned and (partitions is None or tp in partitions):
                offsets[tp] = OffsetAndMetadata(position, "")
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group moved on (rebalance); another member will redo these records.
            log.warning("%s: commit failed, records will be redelivered: %s", self.stage.name, exc)
            return
        except KafkaError as exc:
            log.warning("%s: commit failed (%s); the next interval tries again", self.stage.name, exc)
            return
        for tp, position in offsets.items():
            self._partitions[tp].committed(position.offset)

    async def _wait(self, until: float | Awaitable[None]) -> None:
        """Wait outside any handler slot, for `until` seconds or until it completes; shutdown ends
        the wait and abandons the record, and a revocation cancels it."""
        task = asyncio.current_task()
        if task:
            self._waiting.add(task)
        waited = asyncio.ensure_future(asyncio.sleep(until) if isinstance(until, (int, float)) else until)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waited.cancel()
            stopping.cancel()
            if task:
                self._waiting.discard(task)
        if self._stopping.is_set():
            raise _Abandoned()

    # ------------------------------------------------------------------------- one record

    async def _handle_record(self, record: ConsumerRecord) -> None:
        """Handle one record to a durable outcome: output produced, skipped, or dead-lettered."""
        stage = self.stage.name
        self._metrics.consumed.inc()
        try:
            event = Event.from_bytes(record.value or b"")
            if event.stage != stage:
                raise PermanentError(f"event for stage {event.stage!r} arrived on {record.topic}")
        except (EventDecodeError, PermanentError) as exc:
            self._metrics.failed("DecodeError")
            await self._dead_letter(record, job_id=None, error=exc, attempts=1)
            return

        with tracing.stage_span(stage, job_id=event.job_id, headers=record.headers, topic=record.topic,
                                partition=record.partition, offset=record.offset):
            if event.failure is not None:
                await self._handle_notice(event)
                return
            attempt = await self._first_attempt(event, record)
            if attempt is None:
                return
            started = time.perf_counter()
            try:
                await self._attempts(event, record, attempt)
            finally:
                self._metrics.processing.observe(time.perf_counter() - started)

    async def _first_attempt(self, event: Event, record: ConsumerRecord) -> int | None:
        """Which attempt this delivery is, from the durable count in the job store (counted there
        now, before the handler runs); None when there is nothing left to do (already done, or
        dead-lettered here)."""
        stage = self.stage.name
        claim = await self.store.claim_attempt(event.job_id, stage, max_attempts=self.settings.max_attempts,
                                               skip_done=self.stage.skip_done)
        if claim.action == "run" and not claim.known and event.document_id and not event.erasure:
            # A version of an erased document (replayed from a DLQ, say): nothing is written for it.
            log.info("%s: job %s is a version of an erased document; skipping it", stage, event.job_id)
            self._metrics.skipped.inc()
            return None
        if claim.action == "skip":
            self._metrics.skipped.inc()
            log.info("%s: job %s already done, skipping redelivery", stage, event.job_id)
            return None
        if claim.action == "died":
            error = WorkerDied(f"worker died while handling: {claim.attempt} attempt(s) started, none finished")
            log.warning("%s: job %s %s", stage, event.job_id, error)
            self._metrics.failed("WorkerDied")
            await self._dead_letter(record, job_id=event.job_id, error=error, attempts=claim.attempt)
            reason = f"WorkerDied: {error}"
            await self.store.update_stage(event.job_id, stage, StageState.failed, attempts=claim.attempt, error=reason)
            await self._report_failure(event, reason)
            return None
        return claim.attempt

    async def _attempts(self, event: Event, record: ConsumerRecord, attempt: int) -> None:
        stage = self.stage.name
        counted = True  # the first attempt was counted by the claim
        outages = 0
        while True:
            if not counted:  # a retry, or the same attempt after an outage: the job may be withdrawn since
                if await self.store.cancelled_jobs([event.job_id]):
                    log.info("%s: job %s was cancelled; not trying it again", stage, event.job_id)
                    return
                # Counted before the handler runs: a worker that dies in it still used the attempt.
                await self.store.update_stage(event.job_id, stage, StageState.running, attempts=attempt)
            counted = False
            try:
                output = await self._run_handler(event if event.attempt == attempt else
                                                 event.model_copy(update={"attempt": attempt}))
            except JobCancelled:
                log.info("%s: job %s was cancelled; its handler was stopped", stage, event.job_id)
                return
            except DependencyUnavailable as exc:
                if not exc.charge:
                    outages += 1
                    await self._wait_out(event, attempt, exc, outages)
                    continue  # the same attempt again: the outage did not use it
                if await self._failed(event, record, attempt, exc):
                    return
            except Exception as exc:  # noqa: BLE001 - every failure is classified in _failed
                if await self._failed(event, record, attempt, exc):
                    return
            else:
                await self._done(event, output, attempt)
                return
            attempt += 1

    async def _done(self, event: Event, output: Event | None, attempt: int) -> None:
        """The handler succeeded: its output goes on to the next stage, or, in the last stage,
        the job completes with it."""
        stage, bindings = self.stage.name, self.bindings
        if event.erasure and bindings.last:
            forgotten = await documents.forget(self.store, self.blobs, event.tenant, event.document_id or "",
                                               submitted_before=event.created_at)
            log.info("%s: document %s erased (%d version(s))", stage, event.document_id, forgotten)
            await self.store.finish(event.job_id, stage, attempts=attempt, summary="",
                                    meta={"versions_erased": forgotten})
            return
        if bindings.last and not self.stage.completes_jobs:
            await self._delete_blobs(event.job_id)
            await self.store.finish(event.job_id, stage, attempts=attempt, summary=output.summary if output else None,
                                    meta=output.meta if output else None)
            return
        if output is not None and not bindings.last:
            if output.payload.blob is not None:  # owned by the job before anyone can read it
                blob = output.payload.blob
                await self.store.transform(event.job_id, lambda r: with_blob(r, blob))
                if await self.store.cancelled_jobs([event.job_id]):
                    # Withdrawn meanwhile: a cancelled job keeps no blob, and nothing reads this one.
                    await self._delete_blob(blob)
                    log.info("%s: job %s was cancelled; its output is not sent", stage, event.job_id)
                    return
            await self._send(bindings.output_topic, output, stage=bindings.next_stage)
        await self.store.update_stage(event.job_id, stage, StageState.done, attempts=attempt,
                                      meta=output.meta if output is not None else None)

    async def _delete_blobs(self, job_id: str) -> None:
        """Nothing reads a completing job's blobs any more: they go before it completes, so a
        crash in between leaves none behind."""
        for blob in await self.store.blobs_of(job_id):
            await self._delete_blob(blob)

    async def _delete_blob(self, blob: BlobRef) -> None:
        if self.blobs is not None:
            await self.blobs.delete(blob)

    async def _failed(self, event: Event, record: ConsumerRecord, attempt: int, exc: Exception) -> bool:
        """A charged failure: dead-letter the record (True) or wait out its retry backoff (False)."""
        stage, settings = self.stage.name, self.settings
        self._metrics.failed(type(exc).__name__)
        if isinstance(exc, PermanentError) or attempt >= settings.max_attempts:
            log.warning("%s: job %s failed after %d attempt(s): %s", stage, event.job_id, attempt, exc)
            await self._dead_letter(record, job_id=event.job_id, error=exc, attempts=attempt)
            reason = f"{type(exc).__name__}: {exc}"
            await self.store.update_stage(event.job_id, stage, StageState.failed, attempts=attempt, error=reason)
            await self._report_failure(event, reason)
            return True
        delay = backoff_delay(attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds)
        log.info("%s: job %s attempt %d failed (%s); retrying in %.2fs", stage, event.job_id, attempt, exc, delay)
        self._metrics.retried.inc()
        await self._wait(delay)
        return False

    async def _wait_out(self, event: Event, attempt: int, outage: DependencyUnavailable, outages: int) -> None:
        """Give the attempt back, show the job waiting for the dependency, and wait (holding no
        handler slot) for a backoff, or the server's Retry-After, and until its breaker admits a call."""
        log.debug("%s: job %s waits for %s (%s)", self.stage.name, event.job_id, outage.dependency, outage)
        await self.store.update_stage(event.job_id, self.stage.name, StageState.waiting, attempts=attempt - 1,
                                      error=str(outage)[:500], waiting_for=outage.dependency)
        self._metrics.waiting.inc()
        try:
            delay = outage.retry_after if outage.retry_after is not None else backoff_delay(
                outages, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds)
            await self._wait(delay)
            await self._wait(outage.wait())
        finally:
            self._metrics.waiting.dec()

    async def _run_handler(self, event: Event) -> Event | None:
        timeout = self.settings.stage_timeout_seconds
        async with self._slots:
            self._handling += 1
            self._metrics.in_flight.inc()
            # Its own task, so that a cancellation of the job can stop it alone (see _stop_cancelled_forever);
            # the task counts what its model calls cost in its own tally.
            with usage.counting() as spent:
                handler = asyncio.ensure_future(self._erase(event) if event.erasure else self.stage.handler(event))
            self._handlers[event.job_id] = handler
            try:
                async with asyncio.timeout(timeout):
                    return await handler
            except TimeoutError:
                raise DeadlineExceeded(f"attempt ran past its deadline of {timeout:g}s") from None
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # a shutdown or a revocation: it goes on up
                    raise
                raise JobCancelled(f"job {event.job_id} was cancelled") from None
            finally:
                self._handlers.pop(event.job_id, None)
                self._handling -= 1
                self._last_progress = time.monotonic()
                self._metrics.in_flight.dec()
                if spent.spent:
                    await self._record_usage(event, spent)

    async def _erase(self, event: Event) -> Event:
        """An erasure's handler: the stage's own erase, if it stores anything, then it goes on."""
        if self.stage.erase is not None:
            await self.stage.erase(event)
        return event.next()

    async def _record_usage(self, event: Event, spent: usage.Tally) -> None:
        """What this run of the handler spent, for its tenant's day (a failed write is only logged:
        the record's outcome does not depend on it)."""
        metrics.USAGE_TOKENS.labels(event.tenant, self.stage.name).inc(spent.tokens)
        metrics.USAGE_CALLS.labels(event.tenant, self.stage.name).inc(spent.calls)
        try:
            await self.store.record_usage(event.tenant, event.job_id, self.stage.name, day=usage.day_of(utcnow()),
                                          tokens=spent.tokens, calls=spent.calls)
        except Exception as exc:  # noqa: BLE001 - the store being down must not fail the record
            log.warning("%s: could not record the usage of job %s (%d tokens, %d calls): %s", self.stage.name,
                        event.job_id, spent.tokens, spent.calls, exc)

    # ------------------------------------------------------------------------- producing

    async def _send(self, topic: str, event: Event, **changes: Any) -> None:
        """Produce an output (with `changes` made to it) until the broker acknowledges it: its own
        retries, never the handler's. It carries the producing span's trace context."""
        async def send() -> None:
            with tracing.produce_span(topic, job_id=event.job_id):
                trace = tracing.trace_dict()
                update = changes if trace == event.trace else {**changes, "trace": trace}
                sent = event.model_copy(update=update) if update else event
                await self._producer.send_and_wait(topic, sent.to_bytes(), key=event.partition_key(),
                                                   headers=tracing.kafka_headers(trace))

        await self._until_acknowledged(send, f"job {event.job_id} to {topic}")
        self._metrics.produced(topic).inc()

    async def _handle_notice(self, event: Event) -> None:
        """A notice that the job failed in another stage: handled once, and no progress of this
        stage is recorded for it (the stage may still do the job's work later, after a replay)."""
        try:
            await self._run_handler(event)
        except Exception as exc:  # noqa: BLE001 - the job's status already says it failed
            log.warning("%s: the failure notice of job %s was not handled: %s: %s", self.stage.name, event.job_id,
                        type(exc).__name__, exc)

    async def _report_failure(self, event: Event, error: str) -> None:
        """A job with a callback that failed here: the notifier sends it `job.failed`."""
        if not (self.stage.reports_failures and event.callback_url and self.bindings.notify_topic):
            return
        notice = event.next(stage=NOTIFIER, payload=Payload(), summary=None,
                            failure=Failure(stage=self.stage.name, error=error[:1000]))
        await self._send(self.bindings.notify_topic, notice)

    async def _dead_letter(self, record: ConsumerRecord, *, job_id: str | None, error: BaseException,
                           attempts: int) -> None:
        letter = dead_letter_for(record, stage=self.stage.name, job_id=job_id, error=error, attempts=attempts)
        key, data = (job_id.encode() if job_id else None), letter.model_dump_json().encode()
        # A copy in the job store first: it outlives a broker that keeps its topics in memory.
        await self.store.keep_dead_letter(self.stage.name, data, job_id=job_id)
        await self._until_acknowledged(lambda: self._producer.send_and_wait(self.dlq, data, key=key),
                                       f"the dead letter of {job_id or 'an undecodable record'}")
        self._metrics.dead_lettered.inc()
        log.warning("%s: dead-lettered %s (%s: %s)", self.stage.name, job_id or "undecodable record",
                    letter.error_type, letter.error[:200])

    async def _until_acknowledged(self, send: Callable[[], Awaitable[Any]], what: str) -> None:
        """Retry a send on broker errors with capped backoff until it is acknowledged (or shutdown
        abandons the record, uncommitted)."""
        failures = 0
        while True:
            try:
                await send()
                return
            except KafkaError as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("%s: producing %s failed %d time(s) (%s); retrying", self.stage.name, what,
                                failures, exc)
                await self._wait(backoff_delay(failures, base=self.settings.retry_base_seconds,
                                               cap=BROKER_RETRY_CAP_SECONDS))

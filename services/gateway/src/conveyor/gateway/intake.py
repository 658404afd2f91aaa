"""Accepting a job: admission, its status record and its first event, published durably.

One place for what `/submit` and `/upload` promise with their 202: the tenant was admitted (quota,
pipeline backlog), an `Idempotency-Key` repeat got the first request's job, and the job's record
(with its first event, to re-drive it) is stored and its event acknowledged by every in-sync
replica before the answer goes out. A version of a document whose content its last completed
version already had completes at once instead, and nothing is published (`documents`).

A broker that does not acknowledge within `PUBLISH_TIMEOUT_SECONDS` is down for the gateway: the
request gets 503 with `Retry-After` and its record is removed again, and until a later request
gets through (one at a time, each second or so) the others get the 503 at once, with nothing
written. The producer's own timeout is shorter, so an event that was not acknowledged is not sent
later either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from conveyor import tracing
from conveyor.breakers import Breaker, DependencyFailure
from conveyor.events import Event, Payload
from conveyor.gateway.budget import DailyTokenBudget
from conveyor.gateway.admission import ActiveJobQuota, BacklogBound
from conveyor.gateway import documents, redelivery
from conveyor.gateway.idempotency import Idempotency
from conveyor.ids import new_job_id
from conveyor.kafka.grouped_send import GroupedSender
from conveyor.settings import Settings
from conveyor.stores.base import JobRecord, JobState, JobStore, StageProgress
from conveyor.stores.blobs import BlobStore
from conveyor.topics import input_topic

PRODUCE_TIMEOUT_MS = 1500  # the producer's: a batch not acknowledged by then fails, and is never sent
PUBLISH_TIMEOUT_SECONDS = 2.0  # ours, around the whole send (a topic's metadata can take as long)


@dataclass(frozen=True)
class Submission:
    """What a request submits: who for, where to call back, and how to build its payload (called
    only when the job runs: an unchanged version of a document needs none)."""

    tenant: str
    user_id: str
    callback_url: str | None
    payload: Callable[[], Awaitable[Payload]]
    document_id: str | None = None
    content_sha256: str | None = None
    meta: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    job_id: str
    new: bool  # False: a repeat of an earlier request with the same Idempotency-Key
    state: JobState  # queued, or completed at once (an unchanged version of a document)


class Intake:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, store: JobStore, blobs: BlobStore,
                 backlog: BacklogBound) -> None:
        # The pipeline's first stage reads what the gateway sends; a job's status lists every stage.
        self.stages = tuple(settings.pipeline_stages)
        self.topic = input_topic(self.stages[0], settings.topic_prefix)
        self.store, self.blobs, self.backlog = store, blobs, backlog
        # The jobs accepted in one turn of the loop share a batch.
        self.sender = GroupedSender(producer, max_record_bytes=settings.max_message_bytes)
        self.quota = ActiveJobQuota(store, settings.tenant_max_active_jobs)
        self.budget = DailyTokenBudget(store, settings.tenant_daily_tokens)
        self.idempotency = Idempotency(store, settings.idempotency_ttl_seconds)
        self.broker = Breaker(f"kafka {settings.bootstrap_servers}", failures=1, probe_seconds=1, probe_max_seconds=5)

    async def admit(self, tenant: str) -> None:
        """Refuse new work the tenant's quota or budget or the pipeline cannot take (before any is stored)."""
        self.backlog.check()
        await self.quota.check(tenant)
        await self.budget.check(tenant)

    async def accept(self, submission: Submission, idempotency_key: str | None, digest: Callable[[], str], *,
                     admitted: bool = False) -> Admission:
        """Admit, build and publish the job (nothing new is published for a repeat of an earlier
        request with the same Idempotency-Key, or for an unchanged version of a document). Uploads
        are `admitted` already, before their body is read."""
        tenant, job_id = submission.tenant, new_job_id()
        if idempotency_key is not None:
            job_id, new = await self.idempotency.claim(tenant, idempotency_key, digest())
            if not new:
                return Admission(job_id, False, JobState.queued)
        try:
            if await self._unchanged(job_id, submission):  # nothing runs: no quota or backlog applies
                return Admission(job_id, True, JobState.completed)
            if not admitted:
                await self.admit(tenant)
            event = self.new_event(job_id, tenant, submission.user_id, await submission.payload(),
                                   submission.callback_url, document_id=submission.document_id, **submission.meta)
            await self.publish(event, content_sha256=submission.content_sha256)
            return Admission(job_id, True, JobState.queued)
        except BaseException:
            if idempotency_key is not None:  # not accepted: the key is free for a retry
                await self.idempotency.release(tenant, idempotency_key, job_id)
            raise

    async def _unchanged(self, job_id: str, submission: Submission) -> bool:
        """A version of a document with the content of its last completed one completes at once,
        with that version's summary (and its callback is told so, by the notifiers' schedulers)."""
        if submission.document_id is None or submission.content_sha256 is None:
            return False
        previous = await documents.last_completed(self.store, submission.tenant, submission.document_id)
        if previous is None or previous.content_sha256 != submission.content_sha256:
            return False
        record = JobRecord(job_id=job_id, tenant=submission.tenant, user_id=submission.user_id,
                           callback_url=submission.callback_url, state=JobState.completed,
                           summary=previous.summary, meta={**previous.meta, **submission.meta},
                           document_id=submission.document_id, content_sha256=submission.content_sha256,
                           unchanged_from=previous.unchanged_from or previous.job_id)
        await self.store.create(record)
        if record.callback_url:
            await redelivery.schedule(self.store, record)
        return True

    async def publish(self, event: Event, *, content_sha256: str | None = None) -> None:
        if not self.broker.usable():  # refused before anything is written
            raise self.broker.unavailable(f"{self.broker.name} is unavailable", retry_after=self.broker.probe_seconds)
        event_bytes = event.to_bytes()
        # An erasure is not a version of the document it erases: it is not listed among them.
        record = JobRecord(job_id=event.job_id, tenant=event.tenant, user_id=event.user_id,
                           callback_url=event.callback_url, meta=event.meta,
                           stages={stage: StageProgress() for stage in self.stages},
                           blobs=[event.payload.blob] if event.payload.blob else [],
                           document_id=None if event.erasure else event.document_id,
                           erases=event.document_id if event.erasure else None, content_sha256=content_sha256)
        await self.store.create(record, submission=event_bytes)
        try:
            async with self.broker.call():
                await self._produce(event, event_bytes)
        except BaseException:
            await self.store.discard(event.job_id)  # not accepted: nothing of it stays behind
            if event.payload.blob:
                await self.blobs.delete(event.payload.blob)
            raise
        self.quota.accepted(event.tenant)

    async def _produce(self, event: Event, event_bytes: bytes) -> None:
        with tracing.produce_span(self.topic, job_id=event.job_id):
            trace = tracing.trace_dict()
            if trace:
                event_bytes = event.model_copy(update={"trace": trace}).to_bytes()
            try:
                # Waiting for the broker's ack is the promise behind 202: the job is durable now.
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    await self.sender.send(self.topic, event_bytes, key=event.partition_key(),
                                           headers=tracing.kafka_headers())
            except (KafkaError, asyncio.TimeoutError) as exc:
                if isinstance(exc, KafkaError) and not exc.retriable:
                    raise
                raise DependencyFailure(f"the broker did not acknowledge: {type(exc).__name__}") from exc

    def new_event(self, job_id: str, tenant: str, user_id: str, payload: Payload, callback_url: object, *,
                  document_id: str | None = None, **meta: object) -> Event:
        """A job's first event, for the pipeline's first stage."""
        return Event(job_id=job_id, tenant=tenant, user_id=user_id, stage=self.stages[0], payload=payload,
                     callback_url=str(callback_url) if callback_url else None, document_id=document_id,
                     meta=dict(meta))

"""The job status store interface. SQLite is the default backend, Redis the multi-replica one.

Writes are idempotent: a redelivered event sets the same state again. `mark_notified` records the
job's webhook as delivered, so a redelivered notification does not fire it again.

The store also holds the webhook retry schedule: which jobs have a delivery waiting, and when its
next attempt is due. Workers claim due deliveries with a lease, so several notifier replicas never
send the same one at once, and one that dies mid-send leaves it to be claimed again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from conveyor.events import BlobRef, utcnow
from conveyor.usage import UsageTotal


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    waiting = "waiting"  # held by an outage of a dependency; resumes on its own
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"  # withdrawn by its tenant: every stage skips it, nothing more is written


# Completed or cancelled: nothing will run or re-drive the job again.
FINAL_STATES = frozenset({JobState.completed, JobState.cancelled})
# Final or failed: no longer counted against its tenant's active-job quota.
FINISHED_STATES = frozenset({*FINAL_STATES, JobState.failed})


class StageState(str, Enum):
    pending = "pending"
    running = "running"
    waiting = "waiting"
    done = "done"
    failed = "failed"


class StageProgress(BaseModel):
    state: StageState = StageState.pending
    attempts: int = 0
    error: str | None = None
    updated_at: datetime | None = None
    waiting_for: str | None = Field(None, description="The unavailable dependency this stage waits for.")
    waiting_since: datetime | None = None


class DeliveryState(str, Enum):
    waiting = "waiting"  # a retry is scheduled
    delivered = "delivered"
    failed = "failed"  # the retry schedule is exhausted, or the receiver refused it (4xx)


def delivery_host(url: str) -> str:
    """`host:port` of a callback URL: what the schedule groups deliveries by, and what a webhook
    breaker guards (never the whole URL, which may carry credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class Delivery(BaseModel):
    """The job's webhook delivery, once its first attempt has not succeeded (or a re-send)."""

    state: DeliveryState
    webhook_id: str
    attempts: int = Field(0, description="POSTs made.")
    slot: int = Field(0, description="Position in the retry schedule.")
    last_status: int | None = Field(None, description="HTTP status of the last answer; None: no answer.")
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


DEFAULT_TENANT = "default"


class JobRecord(BaseModel):
    job_id: str
    tenant: str = DEFAULT_TENANT
    user_id: str = Field(description="The submitter's own label, inside the tenant.")
    state: JobState = JobState.queued
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    summary: str | None = None
    error: str | None = None
    callback_url: str | None = None
    notified_at: datetime | None = None
    delivery: Delivery | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    blobs: list[BlobRef] = Field(default_factory=list,
                                 description="Blobs the job's payloads live in: deleted once it completes.")
    document_id: str | None = Field(None, description="The tenant's document this job is a version of.")
    content_sha256: str | None = Field(None, description="Of the version's content and content type.")
    unchanged_from: str | None = Field(None, description="The completed version whose content this one repeats: "
                                                         "it completed at once with that version's summary.")
    erases: str | None = Field(None, description="The document this job erases (an erasure, not a version).")

    def webhook_id(self) -> str:
        """The same on every attempt of one outcome's webhook: the job id for its completion,
        `<job id>.failed` or `.cancelled` for the others (a failed job replayed to completion is
        told both)."""
        if self.state in (JobState.failed, JobState.cancelled):
            return f"{self.job_id}.{self.state.value}"
        return self.job_id

    def outcome_delivery(self) -> Delivery | None:
        """The delivery of this outcome's webhook, if any (not an earlier outcome's: the failure
        notice of a job replayed since)."""
        return self.delivery if self.delivery and self.delivery.webhook_id == self.webhook_id() else None

    def final(self) -> bool:
        """Completed or cancelled: nothing will run or re-drive this job again."""
        return self.state in FINAL_STATES

    def page_key(self) -> str:
        """Where this job stands in its tenant's list, newest first (a cursor for `list_jobs`)."""
        return f"{self.model_dump(mode='json', include={'created_at'})['created_at']}|{self.job_id}"

    def finished(self) -> bool:
        """Completed, failed or cancelled: no longer counted against its tenant's active-job quota."""
        return self.state in FINISHED_STATES

    def redrivable(self) -> bool:
        """Something can still re-drive this job (a dead letter, a waiting delivery): its record
        and blobs must outlive any retention of finished jobs."""
        if self.delivery is not None and self.delivery.state == DeliveryState.waiting:
            return True
        return any(progress.state in (StageState.failed, StageState.waiting) for progress in self.stages.values())


@dataclass(frozen=True)
class Claim:
    """What one delivery of a job's record to a stage is: `run` (attempt number `attempt`, already
    counted), `skip` (the stage is done and skips redeliveries) or `died` (every allowed attempt
    started and none finished: the record took its worker down each time)."""

    action: Literal["run", "skip", "died"]
    attempt: int
    known: bool = True  # False: the store has no record of the job (never created, expired or erased)


class JobStore(abc.ABC):
    """Where job status lives; the gateway reads it, the stages write it."""

    async def claim_attempt(self, job_id: str, stage: str, *, max_attempts: int, skip_done: bool) -> Claim:
        """Decide what this delivery is and, for `run`, count the attempt before the handler runs.
        Backends may do both in one step; this one reads, then writes."""
        from conveyor.stores import records

        updated, claim = records.claim(await self.get(job_id), stage, max_attempts=max_attempts, skip_done=skip_done)
        if updated is not None:
            await self.update_stage(job_id, stage, StageState.running, attempts=claim.attempt)
        return claim

    @abc.abstractmethod
    async def create(self, record: JobRecord, *, submission: bytes | None = None) -> None:
        """Store a new job; a second create of the same id (a redelivery) changes nothing. The
        `submission` (its first event) is kept while the job is unfinished, to re-drive it."""

    @abc.abstractmethod
    async def discard(self, job_id: str) -> None:
        """Forget a job entirely: one that was never accepted (its event could not be published),
        or a version of an erased document. Its record, its place in the active count and in
        listings, its submission, its kept dead letters and its scheduled delivery go."""

    @abc.abstractmethod
    async def unfinished_submissions(self) -> list[tuple[str, bytes]]:
        """Every unfinished job that has a submission: (job id, its first event)."""

    @abc.abstractmethod
    async def list_jobs(self, tenant: str, *, state: JobState | None = None, since: datetime | None = None,
                        before: str | None = None, limit: int = 50, document: str | None = None) -> list[JobRecord]:
        """The tenant's jobs, newest first: those in `state`, updated at or after `since`, versions
        of `document`, created before the job whose `page_key` is `before`; at most `limit`."""

    @abc.abstractmethod
    async def keep_dead_letter(self, stage: str, letter: bytes, *, job_id: str | None) -> None:
        """Keep a copy of a dead letter the stage published, until its job completes or is cancelled."""

    @abc.abstractmethod
    async def dead_letters(self) -> list[tuple[str, bytes]]:
        """Every kept dead letter, oldest first: (stage, the letter)."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def transform(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> bool:
        """Read-modify-write one record atomically against every other writer; `change` returns the
        new record, or None (or the same object) to write nothing. False when the job is unknown."""

    async def update_stage(
        self, job_id: str, stage: str, state: StageState, *, attempts: int = 0, error: str | None = None,
        waiting_for: str | None = None, meta: dict[str, Any] | None = None,
    ) -> None:
        """Record a stage's progress; marks the job running, waiting, or failed when the stage failed.
        `waiting` sets the attempt count as given: the attempt an outage interrupted is given back.
        A stage done gives the job its output's `meta`, so the status shows what it found."""
        from conveyor.stores import records

        await self.transform(job_id, lambda r: records.with_stage(r, stage, state, attempts=attempts, error=error,
                                                                  waiting_for=waiting_for, meta=meta))

    async def complete(self, job_id: str, *, summary: str, meta: dict[str, Any] | None = None) -> None:
        from conveyor.stores import records

        await self.transform(job_id, lambda r: records.completed(r, summary=summary, meta=meta))

    async def finish(self, job_id: str, stage: str, *, attempts: int, summary: str | None,
                     meta: dict[str, Any] | None) -> None:
        """The pipeline's last stage is done with the job: it completes in the same write."""
        from conveyor.stores import records

        await self.transform(job_id, lambda r: records.finished(r, stage, attempts=attempts, summary=summary,
                                                                meta=meta))

    async def blobs_of(self, job_id: str) -> list[BlobRef]:
        """The blobs the job owns (none when it is unknown)."""
        record = await self.get(job_id)
        return list(record.blobs) if record else []

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Mark the job cancelled (again is the same); the record as it now is, None when unknown."""
        from conveyor.stores import records

        await self.transform(job_id, records.cancelled)
        return await self.get(job_id)

    async def cancelled_jobs(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs are cancelled (asked about the ones a worker is handling now)."""
        found = set()
        for job_id in job_ids:
            record = await self.get(job_id)
            if record is not None and record.state == JobState.cancelled:
                found.add(job_id)
        return found

    async def mark_notified(self, job_id: str) -> bool:
        """Record the job's webhook as delivered; False when it already was (or the job is unknown)."""
        from conveyor.stores import records

        return await self.transform(job_id, lambda r: None if r.notified_at else records.notified(r))

    async def set_delivery(self, job_id: str, delivery: Delivery) -> bool:
        return await self.transform(job_id, lambda r: r.model_copy(update={"delivery": delivery}))

    # --- the webhook retry schedule --------------------------------------------------------------

    @abc.abstractmethod
    async def schedule_delivery(self, job_id: str, *, host: str, due: float) -> None:
        """Put (or move) the job's delivery on the schedule; `due` is a Unix time."""

    @abc.abstractmethod
    async def unschedule_delivery(self, job_id: str) -> None: ...

    @abc.abstractmethod
    async def delivery_hosts(self) -> list[str]:
        """Hosts with deliveries on the schedule."""

    @abc.abstractmethod
    async def claim_due_deliveries(self, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        """Up to `limit` jobs whose delivery is due, each leased (moved `lease_seconds` ahead) so
        no other worker takes it meanwhile."""

    @abc.abstractmethod
    async def claim_host_deliveries(self, host: str, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        """Up to `limit` of one host's scheduled deliveries whatever their due time (to probe the
        host, or to release what waited once it is back), leased the same way."""

    @abc.abstractmethod
    async def active_jobs(self, tenant: str) -> int:
        """How many of the tenant's jobs are not finished (queued, running or waiting)."""

    @abc.abstractmethod
    async def record_usage(self, tenant: str, job_id: str, stage: str, *, day: str, tokens: int, calls: int) -> None:
        """Add one handler run's spend to its tenant's day and to its job (conveyor.usage)."""

    @abc.abstractmethod
    async def tenant_usage(self, tenant: str, day: str) -> UsageTotal:
        """What the tenant's jobs spent on `day` (YYYY-MM-DD, UTC)."""

    @abc.abstractmethod
    async def job_usage(self, job_id: str) -> UsageTotal:
        """What the job spent, every stage and day together (jobs is 1 when it spent anything)."""

    @abc.abstractmethod
    async def claim_idempotency_key(self, tenant: str, key: str, *, digest: str, job_id: str,
                                    ttl_seconds: float) -> tuple[str, str]:
        """Bind the tenant's `key` to (`digest`, `job_id`) unless it is bound already and younger
        than `ttl_seconds`; returns the binding that holds: (digest, job id), ours or the first one's."""

    @abc.abstractmethod
    async def release_idempotency_key(self, tenant: str, key: str, *, job_id: str) -> None:
        """Unbind the key if `job_id` holds it (its request failed before the job was accepted)."""

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:  # noqa: B027 - optional for backends without resources
        pass

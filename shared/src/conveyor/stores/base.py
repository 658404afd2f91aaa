"""The job status store interface. SQLite is the default backend, Redis the multi-replica one.

Writes are idempotent: a redelivered event sets the same state again. `mark_notified` is the
one-time claim that keeps a redelivered notification from firing a second webhook.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from conveyor.events import utcnow


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"


class StageState(str, Enum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class StageProgress(BaseModel):
    state: StageState = StageState.pending
    attempts: int = 0
    error: str | None = None
    updated_at: datetime | None = None


class JobRecord(BaseModel):
    job_id: str
    user_id: str
    state: JobState = JobState.queued
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    summary: str | None = None
    error: str | None = None
    callback_url: str | None = None
    notified_at: datetime | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """What one delivery of a job's record to a stage is: `run` (attempt number `attempt`, already
    counted), `skip` (the stage is done and skips redeliveries) or `died` (every allowed attempt
    started and none finished: the record took its worker down each time)."""

    action: Literal["run", "skip", "died"]
    attempt: int


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
    async def create(self, record: JobRecord) -> None: ...

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def update_stage(
        self, job_id: str, stage: str, state: StageState, *, attempts: int = 0, error: str | None = None
    ) -> None:
        """Record a stage's progress; marks the job running (or failed when the stage failed)."""

    @abc.abstractmethod
    async def complete(self, job_id: str, *, summary: str, meta: dict[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    async def mark_notified(self, job_id: str) -> bool:
        """Claim the job's one notification; False when it was already claimed."""

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:  # noqa: B027 - optional for backends without resources
        pass

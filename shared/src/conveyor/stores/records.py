"""State transitions on a JobRecord, shared by every store backend so they agree exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.events import BlobRef, utcnow
from conveyor.stores.base import Claim, JobRecord, JobState, StageProgress, StageState


def stage_after(current: StageProgress | None, state: StageState, *, attempts: int, error: str | None,
                waiting_for: str | None, now: datetime) -> StageProgress | None:
    """A stage's progress once it reports `state`; None when nothing changes (a redelivered event
    must not move a finished stage backwards)."""
    current = current or StageProgress()
    if current.state == StageState.done and state != StageState.done:
        return None
    # A replayed dead letter starts counting its attempts afresh, and a wait for a dependency gives
    # back the attempt the outage interrupted; otherwise the count only grows.
    exact = state == StageState.waiting or (current.state == StageState.failed and state == StageState.running)
    waiting = state == StageState.waiting
    since = (current.waiting_since if current.state == StageState.waiting else None) or now
    return StageProgress(state=state, attempts=attempts if exact else max(attempts, current.attempts),
                         error=error, updated_at=now, waiting_for=waiting_for if waiting else None,
                         waiting_since=since if waiting else None)


def job_after(job_state: JobState, job_error: str | None, stage: str, state: StageState,
              error: str | None) -> tuple[JobState, str | None]:
    """The job's state and error once one of its stages reports `state` (not for a cancelled job)."""
    if state == StageState.failed:
        return JobState.failed, f"{stage}: {error}"
    if state == StageState.waiting and job_state != JobState.completed:
        return JobState.waiting, None
    if job_state in (JobState.queued, JobState.failed, JobState.waiting):
        # A replayed dead letter brings a failed job back to life; an outage's end, a waiting one.
        return JobState.running, None
    return job_state, job_error


def with_stage(record: JobRecord, stage: str, state: StageState, *, attempts: int, error: str | None,
               waiting_for: str | None = None, meta: dict[str, Any] | None = None) -> JobRecord:
    """The record after a stage reports progress (and, done, the job's meta as its output has
    it). Finished jobs stay finished (redeliveries)."""
    if record.state == JobState.cancelled:
        return record  # nothing is written for a cancelled job
    now = utcnow()
    progress = stage_after(record.stages.get(stage), state, attempts=attempts, error=error, waiting_for=waiting_for,
                           now=now)
    if progress is None:
        return record
    job_state, error_text = job_after(record.state, record.error, stage, state, error)
    update = {"stages": {**record.stages, stage: progress}, "state": job_state, "error": error_text, "updated_at": now}
    if meta is not None and state == StageState.done and job_state != JobState.completed:
        update["meta"] = {**record.meta, **meta}
    return record.model_copy(update=update)


def completed(record: JobRecord, *, summary: str, meta: dict[str, Any] | None) -> JobRecord:
    if record.state == JobState.cancelled:
        return record
    return record.model_copy(update={
        "state": JobState.completed, "summary": summary, "error": None, "updated_at": utcnow(),
        "meta": {**record.meta, **(meta or {})},
    })


def finished(record: JobRecord, stage: str, *, attempts: int, summary: str | None,
             meta: dict[str, Any] | None) -> JobRecord:
    """The record once the pipeline's last stage is done: the stage done and the job completed
    (with the summary the stage gave, else the one it has), unless it already was, or was cancelled."""
    record = with_stage(record, stage, StageState.done, attempts=attempts, error=None)
    if record.final():
        return record
    return completed(record, summary=summary if summary is not None else record.summary or "", meta=meta)


def notified(record: JobRecord) -> JobRecord:
    return record.model_copy(update={"notified_at": utcnow()})


def claim_for(job_state: JobState | None, progress: StageProgress | None, *, max_attempts: int,
              skip_done: bool) -> Claim:
    """What one delivery to a stage is, from the job's state (None: the job is unknown) and the
    stage's progress so far."""
    if job_state == JobState.cancelled:
        return Claim("skip", 0)
    if progress is None or progress.state in (StageState.pending, StageState.failed):
        attempt = 1  # new, or replayed from the dead-letter topic
    elif progress.state == StageState.done:
        if skip_done:
            return Claim("skip", progress.attempts)
        attempt = 1
    elif progress.attempts >= max_attempts:
        return Claim("died", progress.attempts)
    else:
        attempt = progress.attempts + 1
    return Claim("run", attempt, known=job_state is not None)


def claim(record: JobRecord | None, stage: str, *, max_attempts: int, skip_done: bool) -> tuple[JobRecord | None, Claim]:
    """The record with this delivery's attempt counted (None: nothing to write), and the claim."""
    found = claim_for(record.state if record else None, record.stages.get(stage) if record else None,
                      max_attempts=max_attempts, skip_done=skip_done)
    if found.action != "run" or record is None:
        return None, found
    updated = with_stage(record, stage, StageState.running, attempts=found.attempt, error=None)
    return (updated if updated is not record else None), found


def restarted(record: JobRecord) -> JobRecord:
    """The record of an unfinished job re-driven from its submission (its queued events were lost
    with the broker): every stage runs again, so stages that skip what they did once do not."""
    if record.finished():
        return record
    now = utcnow()
    return record.model_copy(update={"stages": {name: StageProgress() for name in record.stages},
                                     "state": JobState.queued, "error": None, "updated_at": now})


def with_blob(record: JobRecord, blob: BlobRef) -> JobRecord | None:
    """The record owning one more blob (None: it owns it already, or the job is cancelled and
    keeps none)."""
    if record.state == JobState.cancelled or any(owned.uri == blob.uri for owned in record.blobs):
        return None
    return record.model_copy(update={"blobs": [*record.blobs, blob]})


def cancelled(record: JobRecord) -> JobRecord:
    """The record of a job its tenant withdrew; a completed (or cancelled) one stays as it is."""
    if record.final():
        return record
    return record.model_copy(update={"state": JobState.cancelled, "updated_at": utcnow()})

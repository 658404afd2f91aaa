"""State transitions on a JobRecord, shared by every store backend so they agree exactly."""

from __future__ import annotations

from typing import Any

from conveyor.events import BlobRef, utcnow
from conveyor.stores.base import Claim, JobRecord, JobState, StageProgress, StageState


def with_stage(record: JobRecord, stage: str, state: StageState, *, attempts: int, error: str | None,
               waiting_for: str | None = None, meta: dict[str, Any] | None = None) -> JobRecord:
    """The record after a stage reports progress (and, done, the job's meta as its output has
    it). Finished jobs stay finished (redeliveries)."""
    if record.state == JobState.cancelled:
        return record  # nothing is written for a cancelled job
    now = utcnow()
    current = record.stages.get(stage, StageProgress())
    if current.state == StageState.done and state != StageState.done:
        return record  # a redelivered event must not move a finished stage backwards
    stages = dict(record.stages)
    # A replayed dead letter starts counting its attempts afresh, and a wait for a dependency gives
    # back the attempt the outage interrupted; otherwise the count only grows.
    exact = state == StageState.waiting or (current.state == StageState.failed and state == StageState.running)
    waiting = state == StageState.waiting
    since = (current.waiting_since if current.state == StageState.waiting else None) or now
    stages[stage] = StageProgress(state=state, attempts=attempts if exact else max(attempts, current.attempts),
                                  error=error, updated_at=now, waiting_for=waiting_for if waiting else None,
                                  waiting_since=since if waiting else None)
    job_state = record.state
    if state == StageState.failed:
        job_state, error_text = JobState.failed, f"{stage}: {error}"
    elif waiting and job_state != JobState.completed:
        job_state, error_text = JobState.waiting, None
    elif job_state in (JobState.queued, JobState.failed, JobState.waiting):
        # A replayed dead letter brings a failed job back to life; an outage's end, a waiting one.
        job_state, error_text = JobState.running, None
    else:
        error_text = record.error
    update = {"stages": stages, "state": job_state, "error": error_text, "updated_at": now}
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


def claim(record: JobRecord | None, stage: str, *, max_attempts: int, skip_done: bool) -> tuple[JobRecord | None, Claim]:
    """The record with this delivery's attempt counted (None: nothing to write), and the claim."""
    if record is not None and record.state == JobState.cancelled:
        return None, Claim("skip", 0)
    progress = record.stages.get(stage) if record else None
    if progress is None or progress.state in (StageState.pending, StageState.failed):
        attempt = 1  # new, or replayed from the dead-letter topic
    elif progress.state == StageState.done:
        if skip_done:
            return None, Claim("skip", progress.attempts)
        attempt = 1
    elif progress.attempts >= max_attempts:
        return None, Claim("died", progress.attempts)
    else:
        attempt = progress.attempts + 1
    updated = with_stage(record, stage, StageState.running, attempts=attempt, error=None) if record else None
    return (updated if updated is not record else None), Claim("run", attempt, known=record is not None)


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

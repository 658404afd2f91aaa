"""Stage progress in its own rows: the SQLite store's hot path.

Every record a stage handles writes its stage's progress twice (the attempt counted, then done).
Read-modify-writing the whole job record for that (parse the JSON, validate, re-serialize, rewrite
the row and its indexes) cost most of a hop's CPU. So each stage's progress is a small row of
`stage_progress`, written on its own; the job's record changes only when the job's own state,
error or meta does (its first stage starting, a failure, a wait, a finished stage's meta).

A job's status is its record with its rows laid over it: a row is newer than the record's entry
for that stage, and the job's `updated_at` is the latest of both. A write of the whole record
(`transform`) folds the rows back into it and deletes them, so there is never more than one truth
for a stage: the record's entry, or a row written since.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic_core import to_jsonable_python

from conveyor.events import utcnow
from conveyor.stores import records
from conveyor.stores.base import Claim, JobRecord, JobState, StageProgress, StageState

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stage_progress (job_id TEXT NOT NULL, stage TEXT NOT NULL, state TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, error TEXT, updated_at TEXT NOT NULL, waiting_for TEXT, waiting_since TEXT, "
    "PRIMARY KEY (job_id, stage)) WITHOUT ROWID",
)
COLUMNS = "state, attempts, error, updated_at, waiting_for, waiting_since"
_SELECT_CHUNK = 500

# (job id, tenant, state before, state after) of a job whose state a write changed.
StateChange = tuple[str, str, JobState | None, JobState]


def timestamp(moment: datetime) -> str:
    """As records serialize their times (UTC, `Z`), so that the strings compare as the times do."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _progress(row: tuple[Any, ...]) -> StageProgress:
    state, attempts, error, updated_at, waiting_for, waiting_since = row
    return StageProgress.model_validate({"state": state, "attempts": attempts, "error": error,
                                         "updated_at": updated_at, "waiting_for": waiting_for,
                                         "waiting_since": waiting_since})


def _row(job_id: str, stage: str, progress: StageProgress) -> tuple[Any, ...]:
    return (job_id, stage, progress.state.value, progress.attempts, progress.error,
            timestamp(progress.updated_at or utcnow()), progress.waiting_for,
            timestamp(progress.waiting_since) if progress.waiting_since else None)


def load(db: sqlite3.Connection, job_ids: list[str]) -> dict[str, JobRecord]:
    """The jobs' status as callers see it: each record with its stage rows laid over it."""
    found: dict[str, JobRecord] = {}
    for start in range(0, len(job_ids), _SELECT_CHUNK):
        chunk = job_ids[start:start + _SELECT_CHUNK]
        marks = ",".join("?" * len(chunk))
        raw = db.execute(f"SELECT job_id, record FROM jobs WHERE job_id IN ({marks})", chunk).fetchall()
        rows = db.execute(f"SELECT job_id, stage, {COLUMNS} FROM stage_progress WHERE job_id IN ({marks})",
                          chunk).fetchall()
        found.update(assemble(raw, rows))
    return found


def assemble(raw: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> dict[str, JobRecord]:
    """Records (job id, JSON) with their stage rows (job id, stage, columns...) laid over them."""
    records_by_id = {job_id: JobRecord.model_validate_json(text) for job_id, text in raw}
    progress: dict[str, dict[str, StageProgress]] = {}
    for job_id, stage, *columns in rows:
        progress.setdefault(job_id, {})[stage] = _progress(tuple(columns))
    for job_id, stages in progress.items():
        record = records_by_id.get(job_id)
        if record is None:
            continue
        latest = max([record.updated_at, *(p.updated_at for p in stages.values() if p.updated_at)])
        records_by_id[job_id] = record.model_copy(update={"stages": {**record.stages, **stages},
                                                          "updated_at": latest})
    return records_by_id


def fold(db: sqlite3.Connection, job_ids: list[str]) -> None:
    """The rows of these jobs are in their records now (a whole-record write): drop them."""
    if job_ids:
        db.executemany("DELETE FROM stage_progress WHERE job_id = ?", [(job_id,) for job_id in job_ids])


@dataclass(frozen=True)
class _Current:
    """What a stage write needs of a job: its own state and error, and the stage's progress."""

    tenant: str
    state: JobState
    error: str | None
    progress: StageProgress | None


def _read(db: sqlite3.Connection, job_id: str, stage: str) -> _Current | None:
    row = db.execute(
        "SELECT json_extract(j.record, '$.tenant'), json_extract(j.record, '$.state'), "
        "json_extract(j.record, '$.error'), p.state, p.attempts, p.error, p.updated_at, p.waiting_for, "
        "p.waiting_since, CASE WHEN p.state IS NULL THEN json_extract(j.record, ?) END "
        "FROM jobs j LEFT JOIN stage_progress p ON p.job_id = j.job_id AND p.stage = ? WHERE j.job_id = ?",
        (_stage_path(stage), stage, job_id)).fetchone()
    if row is None:
        return None
    tenant, state, error, *columns, entry = row
    if columns[0] is not None:
        progress: StageProgress | None = _progress(tuple(columns))
    else:
        progress = StageProgress.model_validate_json(entry) if entry else None
    return _Current(tenant, JobState(state), error, progress)


def _stage_path(stage: str) -> str:
    # Stage names are DNS labels; quoted, a `-` in one is part of the key.
    return f'$.stages."{stage}"'


@dataclass(frozen=True)
class StageWrite:
    """One stage reports progress (`JobStore.update_stage`), written as its row."""

    stage: str
    state: StageState
    attempts: int
    error: str | None = None
    waiting_for: str | None = None
    meta: dict[str, Any] | None = None

    def on_record(self, record: JobRecord | None) -> tuple[JobRecord | None, None]:
        """The same change on a whole record (a job that a whole-record write in the same
        transaction holds)."""
        if record is None:
            return None, None
        updated = records.with_stage(record, self.stage, self.state, attempts=self.attempts, error=self.error,
                                     waiting_for=self.waiting_for, meta=self.meta)
        return (None if updated is record else updated), None

    def on_rows(self, db: sqlite3.Connection, job_id: str) -> tuple[None, StateChange | None]:
        current = _read(db, job_id, self.stage)
        if current is None:
            return None, None
        return None, _write(db, job_id, self.stage, current, self.state, attempts=self.attempts, error=self.error,
                            waiting_for=self.waiting_for, meta=self.meta)


@dataclass(frozen=True)
class StageClaim:
    """One delivery to a stage claims its attempt (`JobStore.claim_attempt`)."""

    stage: str
    max_attempts: int
    skip_done: bool

    def on_record(self, record: JobRecord | None) -> tuple[JobRecord | None, Claim]:
        return records.claim(record, self.stage, max_attempts=self.max_attempts, skip_done=self.skip_done)

    def on_rows(self, db: sqlite3.Connection, job_id: str) -> tuple[Claim, StateChange | None]:
        current = _read(db, job_id, self.stage)
        claim = records.claim_for(current.state if current else None, current.progress if current else None,
                                  max_attempts=self.max_attempts, skip_done=self.skip_done)
        if claim.action != "run" or current is None:
            return claim, None
        return claim, _write(db, job_id, self.stage, current, StageState.running, attempts=claim.attempt,
                             error=None)


StageOperation = StageWrite | StageClaim


def _write(db: sqlite3.Connection, job_id: str, stage: str, current: _Current, state: StageState, *,
           attempts: int, error: str | None, waiting_for: str | None = None,
           meta: dict[str, Any] | None = None) -> StateChange | None:
    """`records.with_stage` on the rows: the stage's row, and the job's record only when the
    job's own fields change. Returns the job's state change, if any."""
    if current.state == JobState.cancelled:
        return None
    now = utcnow()
    progress = records.stage_after(current.progress, state, attempts=attempts, error=error, waiting_for=waiting_for,
                                   now=now)
    if progress is None:
        return None
    db.execute(f"INSERT OR REPLACE INTO stage_progress (job_id, stage, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               _row(job_id, stage, progress))
    job_state, job_error = records.job_after(current.state, current.error, stage, state, error)
    merged = _merged_meta(db, job_id, meta) if state == StageState.done and job_state != JobState.completed else None
    if (job_state, job_error) == (current.state, current.error) and merged is None:
        return None
    if merged is None:
        db.execute("UPDATE jobs SET record = json_set(record, '$.state', ?, '$.error', ?, '$.updated_at', ?) "
                   "WHERE job_id = ?", (job_state.value, job_error, timestamp(now), job_id))
    else:
        db.execute("UPDATE jobs SET record = json_set(record, '$.state', ?, '$.error', ?, '$.updated_at', ?, "
                   "'$.meta', json(?)) WHERE job_id = ?",
                   (job_state.value, job_error, timestamp(now), json.dumps(merged), job_id))
    return (job_id, current.tenant, current.state, job_state) if job_state != current.state else None


def _merged_meta(db: sqlite3.Connection, job_id: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's meta with a finished stage's output meta merged in; None when that changes nothing."""
    if not meta:
        return None
    (text,) = db.execute("SELECT json_extract(record, '$.meta') FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    have = json.loads(text) if text else {}
    merged = {**have, **to_jsonable_python(meta)}
    return None if merged == have else merged

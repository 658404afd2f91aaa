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

The stage operations of one transaction read what they need of their jobs in two queries, apply
in order in memory, and write in one statement per kind (`RowView`): a few calls into SQLite a
transaction, not a few per operation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import TypeAdapter

from conveyor.events import BlobRef, utcnow
from conveyor.stores import records
from conveyor.stores.base import Claim, JobRecord, JobState, StageProgress, StageState

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stage_progress (job_id TEXT NOT NULL, stage TEXT NOT NULL, state TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, error TEXT, updated_at TEXT NOT NULL, waiting_for TEXT, waiting_since TEXT, "
    "PRIMARY KEY (job_id, stage)) WITHOUT ROWID",
)
COLUMNS = "state, attempts, error, updated_at, waiting_for, waiting_since"
_SELECT_CHUNK = 500
_META = TypeAdapter(dict[str, Any])  # a stage's output meta, as the record's JSON holds it

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
    for chunk in chunks(job_ids):
        raw = db.execute(f"SELECT job_id, record FROM jobs WHERE job_id IN ({_marks(chunk)})", chunk).fetchall()
        found.update(assemble(raw, stage_rows(db, chunk)))
    return found


def stage_rows(db: sqlite3.Connection, job_ids: list[str]) -> list[tuple[Any, ...]]:
    """The stage rows of these jobs: (job id, stage, COLUMNS...)."""
    return [row for chunk in chunks(job_ids) for row in db.execute(
        f"SELECT job_id, stage, {COLUMNS} FROM stage_progress WHERE job_id IN ({_marks(chunk)})", chunk)]


def chunks(job_ids: list[str]) -> list[list[str]]:
    """The ids in runs short enough for one `IN (...)` each."""
    return [job_ids[start:start + _SELECT_CHUNK] for start in range(0, len(job_ids), _SELECT_CHUNK)]


def _marks(chunk: list[str]) -> str:
    return ",".join("?" * len(chunk))


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


def drop_rows(db: sqlite3.Connection, job_ids: list[str]) -> None:
    """Delete these jobs' stage rows: folded into a whole-record write, or gone with their jobs."""
    if job_ids:
        db.executemany("DELETE FROM stage_progress WHERE job_id = ?", [(job_id,) for job_id in job_ids])


@dataclass(slots=True)
class _Job:
    """What stage operations need of a job's record: its own state and error, and its stages' entries."""

    tenant: str
    state: JobState
    error: str | None
    entries: str | dict[str, Any] | None  # the record's `stages` (JSON), parsed when a stage has no row
    loaded_state: JobState  # as read, to tell the active-job count what changed


class RowView:
    """One transaction's stage operations against their jobs, read up front; `flush` writes what
    they changed."""

    def __init__(self, db: sqlite3.Connection, job_ids: list[str]) -> None:
        self._db = db
        self._jobs: dict[str, _Job] = {}
        self._progress: dict[tuple[str, str], StageProgress | None] = {}
        self._rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._updates: dict[str, dict[str, Any]] = {}  # job id -> record fields to set
        for chunk in chunks(job_ids):
            for job_id, tenant, state, error, entries in db.execute(
                    "SELECT job_id, json_extract(record, '$.tenant'), json_extract(record, '$.state'), "
                    f"json_extract(record, '$.error'), json_extract(record, '$.stages') FROM jobs "
                    f"WHERE job_id IN ({_marks(chunk)})", chunk):
                self._jobs[job_id] = _Job(tenant, JobState(state), error, entries, JobState(state))
        for job_id, stage, *columns in stage_rows(db, job_ids):
            self._progress[job_id, stage] = _progress(tuple(columns))

    def job(self, job_id: str) -> _Job | None:
        return self._jobs.get(job_id)

    def writable(self, job_id: str) -> _Job | None:
        """The job, unless it is unknown or cancelled (nothing is written for those)."""
        job = self._jobs.get(job_id)
        return None if job is None or job.state == JobState.cancelled else job

    def progress(self, job_id: str, stage: str) -> StageProgress | None:
        """The stage's progress: its row, else the record's entry (read once)."""
        key = (job_id, stage)
        if key not in self._progress:
            job = self._jobs[job_id]
            if isinstance(job.entries, str):
                job.entries = json.loads(job.entries)
            entry = job.entries.get(stage) if job.entries else None
            self._progress[key] = StageProgress.model_validate(entry) if entry else None
        return self._progress[key]

    def stage_reports(self, job_id: str, stage: str, state: StageState, *, attempts: int, error: str | None,
                      now: datetime, waiting_for: str | None = None) -> bool:
        """`records.with_stage` on the stage's row and the job's state and error; False when
        nothing changes (a finished stage never moves backwards)."""
        job = self._jobs[job_id]
        progress = records.stage_after(self.progress(job_id, stage), state, attempts=attempts, error=error,
                                       waiting_for=waiting_for, now=now)
        if progress is None:
            return False
        self._progress[job_id, stage] = progress
        self._rows[job_id, stage] = _row(job_id, stage, progress)
        state_after, error_after = records.job_after(job.state, job.error, stage, state, error)
        if (state_after, error_after) != (job.state, job.error):
            job.state, job.error = state_after, error_after
            self.set(job_id, now, state=state_after.value, error=error_after)
        return True

    def set(self, job_id: str, now: datetime, **fields: Any) -> None:
        """Set fields of the job's record (besides `updated_at`, which becomes `now`)."""
        self._updates.setdefault(job_id, {}).update(fields, updated_at=timestamp(now))

    def field(self, job_id: str, name: str) -> Any:
        """A field of the job's record as this transaction has it: `meta` parsed, other fields as
        SQLite's json_extract gives them (text; an array as its JSON)."""
        pending = self._updates.get(job_id, {})
        if name in pending:
            return pending[name]
        (text,) = self._db.execute(f"SELECT json_extract(record, '$.{name}') FROM jobs WHERE job_id = ?",
                                   (job_id,)).fetchone()
        return json.loads(text) if name == "meta" and text else text

    def merged_meta(self, job_id: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        """The job's meta with a finished stage's output meta merged in; None when that changes nothing."""
        if not meta:
            return None
        have = self.field(job_id, "meta") or {}
        merged = {**have, **_META.dump_python(meta, mode="json")}
        return None if merged == have else merged

    def flush(self) -> list[StateChange]:
        """Write the changed rows and record fields; the jobs whose state changed."""
        if self._rows:
            self._db.executemany(
                f"INSERT OR REPLACE INTO stage_progress (job_id, stage, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                list(self._rows.values()))
        by_shape: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for job_id, fields in self._updates.items():
            names = tuple(sorted(fields))
            values = [json.dumps(value) if name == "meta" else value for name, value in sorted(fields.items())]
            by_shape.setdefault(names, []).append((*values, job_id))
        for names, rows in by_shape.items():
            paths = ", ".join(f"'$.{name}', " + ("json(?)" if name == "meta" else "?") for name in names)
            self._db.executemany(f"UPDATE jobs SET record = json_set(record, {paths}) WHERE job_id = ?", rows)
        return [(job_id, job.tenant, job.loaded_state, job.state) for job_id, job in self._jobs.items()
                if job.state != job.loaded_state]


@dataclass(slots=True)  # not frozen: one is made per write, and frozen ones are slower to make
class StageWrite:
    """One stage reports progress (`JobStore.update_stage`)."""

    stage: str
    state: StageState
    attempts: int
    error: str | None = None
    waiting_for: str | None = None
    meta: dict[str, Any] | None = None

    def on_record(self, record: JobRecord | None) -> tuple[JobRecord | None, None]:
        """The same change on a whole record (a job that a whole-record write in the same
        transaction holds)."""
        return _on_whole(record, lambda r: records.with_stage(
            r, self.stage, self.state, attempts=self.attempts, error=self.error, waiting_for=self.waiting_for,
            meta=self.meta))

    def on_rows(self, view: RowView, job_id: str) -> None:
        job = view.writable(job_id)
        if job is None:
            return
        now = utcnow()
        # Worked out before anything is written, so that an operation that fails writes nothing.
        merged = view.merged_meta(job_id, self.meta) if self.state == StageState.done and \
            job.state != JobState.completed else None
        if view.stage_reports(job_id, self.stage, self.state, attempts=self.attempts, error=self.error,
                              waiting_for=self.waiting_for, now=now) and merged is not None:
            view.set(job_id, now, meta=merged)


@dataclass(slots=True)
class StageClaim:
    """One delivery to a stage claims its attempt (`JobStore.claim_attempt`)."""

    stage: str
    max_attempts: int
    skip_done: bool

    def on_record(self, record: JobRecord | None) -> tuple[JobRecord | None, Claim]:
        return records.claim(record, self.stage, max_attempts=self.max_attempts, skip_done=self.skip_done)

    def on_rows(self, view: RowView, job_id: str) -> Claim:
        job = view.job(job_id)
        claim = records.claim_for(job.state if job else None, view.progress(job_id, self.stage) if job else None,
                                  max_attempts=self.max_attempts, skip_done=self.skip_done)
        if claim.action == "run" and job is not None:
            view.stage_reports(job_id, self.stage, StageState.running, attempts=claim.attempt, error=None,
                               now=utcnow())
        return claim


@dataclass(slots=True)
class StageFinish:
    """The pipeline's last stage is done with the job, which completes (`JobStore.finish`)."""

    stage: str
    attempts: int
    summary: str | None
    meta: dict[str, Any] | None

    def on_record(self, record: JobRecord | None) -> tuple[JobRecord | None, None]:
        return _on_whole(record, lambda r: records.finished(r, self.stage, attempts=self.attempts,
                                                            summary=self.summary, meta=self.meta))

    def on_rows(self, view: RowView, job_id: str) -> None:
        job = view.writable(job_id)
        if job is None:
            return
        now = utcnow()
        completing = job.state != JobState.completed  # else a redelivery: it completed already
        if completing:  # worked out before anything is written, so that a failure writes nothing
            summary = self.summary if self.summary is not None else view.field(job_id, "summary")
            merged = view.merged_meta(job_id, self.meta)
        view.stage_reports(job_id, self.stage, StageState.done, attempts=self.attempts, error=None, now=now)
        if not completing:
            return
        job.state, job.error = JobState.completed, None
        view.set(job_id, now, state=JobState.completed.value, error=None, summary=summary or "",
                 **({"meta": merged} if merged is not None else {}))


@dataclass(slots=True)
class BlobsRead:
    """The blobs a job owns (`JobStore.blobs_of`), without parsing its whole record."""

    def on_record(self, record: JobRecord | None) -> tuple[None, list[BlobRef]]:
        return None, list(record.blobs) if record else []

    def on_rows(self, view: RowView, job_id: str) -> list[BlobRef]:
        if view.job(job_id) is None:
            return []
        owned = view.field(job_id, "blobs")
        return [BlobRef.model_validate(blob) for blob in json.loads(owned)] if owned and owned != "[]" else []


StageOperation = StageWrite | StageClaim | StageFinish | BlobsRead


def _on_whole(record: JobRecord | None, change: Callable[[JobRecord], JobRecord]) -> tuple[JobRecord | None, None]:
    """`change` on a whole record: the record to write (None when nothing changes)."""
    if record is None:
        return None, None
    updated = change(record)
    return (None if updated is record else updated), None

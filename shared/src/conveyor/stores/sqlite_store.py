"""SQLite job store: the default, for one machine (several processes share the file, WAL mode).

Group commit: the reads and read-modify-writes that callers start while a transaction is running
wait and share the next one, so a worker with many records in flight pays one transaction (and
one trip to the database thread) per group, not per update. Each caller still returns only once
its own change is committed. A stage's progress lives in rows of its own (`sqlite_progress`), so
the writes every hop makes do not rewrite the job's whole record.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.stores import sqlite_progress as progress
from conveyor.events import BlobRef
from conveyor.usage import UsageTotal
from conveyor.stores.base import FINAL_STATES, FINISHED_STATES, Claim, JobRecord, JobState, JobStore, StageState

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, record TEXT NOT NULL)",
    # The webhook retry schedule: one row per waiting delivery, `due` a Unix time.
    "CREATE TABLE IF NOT EXISTS deliveries (job_id TEXT PRIMARY KEY, host TEXT NOT NULL, due REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due)",
    "CREATE INDEX IF NOT EXISTS deliveries_host ON deliveries (host, due)",
    # Unfinished jobs per tenant (the active-job quota): a row while the job is not finished.
    "CREATE TABLE IF NOT EXISTS active_jobs (job_id TEXT PRIMARY KEY, tenant TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS active_jobs_tenant ON active_jobs (tenant)",
    # Each unfinished job's first event, to re-drive it when the events in flight are lost.
    "CREATE TABLE IF NOT EXISTS submissions (job_id TEXT PRIMARY KEY, event BLOB NOT NULL)",
    # A tenant's jobs, newest first (GET /jobs).
    "CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs "
    "(json_extract(record, '$.tenant'), json_extract(record, '$.created_at'), job_id)",
    # A document's versions (GET /jobs?document=), newest first.
    "CREATE INDEX IF NOT EXISTS jobs_by_document ON jobs (json_extract(record, '$.tenant'), "
    "json_extract(record, '$.document_id'), json_extract(record, '$.created_at'), job_id)",
    # Copies of the dead letters the stages published, until their job completes.
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY, stage TEXT NOT NULL, job_id TEXT, "
    "letter BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dead_letters_job ON dead_letters (job_id)",
    # Idempotency keys: the first request's body digest and job, per tenant and key.
    "CREATE TABLE IF NOT EXISTS idempotency_keys (tenant TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL, "
    "job_id TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (tenant, key))",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created)",
    # What model calls cost: one row per handler run that spent anything (conveyor.usage).
    "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, day TEXT NOT NULL, "
    "job_id TEXT NOT NULL, stage TEXT NOT NULL, tokens INTEGER NOT NULL, calls INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_by_tenant_day ON usage (tenant, day)",
    "CREATE INDEX IF NOT EXISTS usage_by_job ON usage (job_id)",
    *progress.SCHEMA,
)
_INSERT_CHUNK = 400  # rows per INSERT statement: 800 variables, far below SQLite's limit
# Applied to a job's current record (None when there is none): (record to write or None, result).
_Operation = Callable[[JobRecord | None], tuple[JobRecord | None, Any]]
_Batch = list[tuple[str, "_Operation | progress.StageOperation", "asyncio.Future[Any]"]]


def _apply_in_one_transaction(db: sqlite3.Connection, batch: _Batch) -> list[tuple[bool, Any]]:
    """Every operation of the batch, in order, in one immediate transaction. A job that any
    whole-record operation touches is read and parsed once and written once, and its stage writes
    apply to that record; the other jobs' stage writes go to their rows. An operation that raises
    fails alone. A batch of reads only takes no write lock."""
    db.execute("BEGIN" if all(operation is _read for _, operation, _ in batch) else "BEGIN IMMEDIATE")
    try:
        whole = {job_id for job_id, operation, _ in batch if not isinstance(operation, progress.StageOperation)}
        current = progress.load(db, sorted(whole))
        before = dict(current)
        rows = progress.RowView(db, sorted({job_id for job_id, _, _ in batch} - whole))
        changed: set[str] = set()
        outcomes: list[tuple[bool, Any]] = []
        for job_id, operation, _ in batch:
            try:
                if isinstance(operation, progress.StageOperation) and job_id not in whole:
                    outcomes.append((True, operation.on_rows(rows, job_id)))
                    continue
                apply = operation.on_record if isinstance(operation, progress.StageOperation) else operation
                updated, result = apply(current.get(job_id))
            except (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise  # the database failed, not this operation: the whole batch fails
            except Exception as exc:  # noqa: BLE001 - this caller's failure only
                outcomes.append((False, exc))
                continue
            if updated is not None:
                current[job_id] = updated
                changed.add(job_id)
            outcomes.append((True, result))
        state_changes = rows.flush()
        if changed:
            db.executemany("UPDATE jobs SET record = ? WHERE job_id = ?",
                           [(current[job_id].model_dump_json(), job_id) for job_id in changed])
            progress.drop_rows(db, sorted(changed))  # folded into the records
            state_changes += [(job_id, current[job_id].tenant, before[job_id].state if job_id in before else None,
                               current[job_id].state) for job_id in changed]
        _track_active(db, state_changes)
        db.execute("COMMIT")
        return outcomes
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _read(record: JobRecord | None) -> tuple[None, JobRecord | None]:
    return None, record


def _track_active(db: sqlite3.Connection, changes: list[progress.StateChange]) -> None:
    """Keep `active_jobs` in step with the jobs whose finished-ness changed."""
    ended = [(job_id,) for job_id, _, before, after in changes
             if after in FINISHED_STATES and (before is None or before not in FINISHED_STATES)]
    revived = [(job_id, tenant) for job_id, tenant, before, after in changes
               if after not in FINISHED_STATES and (before is None or before in FINISHED_STATES)]
    if ended:
        db.executemany("DELETE FROM active_jobs WHERE job_id = ?", ended)
        db.executemany("DELETE FROM submissions WHERE job_id = ?", ended)
    done_with = [(job_id,) for job_id, _, before, after in changes
                 if after in FINAL_STATES and before not in FINAL_STATES]
    if done_with:  # nothing can re-drive these any more
        db.executemany("DELETE FROM dead_letters WHERE job_id = ?", done_with)
    if revived:
        db.executemany("INSERT OR IGNORE INTO active_jobs VALUES (?, ?)", revived)


def _insert_new(db: sqlite3.Connection, rows: list[tuple[str, str]], unfinished: dict[str, str],
                submissions: dict[str, bytes]) -> None:
    """Insert the records that do not exist yet (a repeated create changes nothing), count the
    unfinished ones among them as active and keep their submissions, in one transaction."""
    with db:
        db.execute("BEGIN")
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start:start + _INSERT_CHUNK]
            inserted = db.execute(f"INSERT OR IGNORE INTO jobs VALUES {_marks(len(chunk), 2)} RETURNING job_id",
                                  [value for row in chunk for value in row]).fetchall()
            active = [(job_id, unfinished[job_id]) for (job_id,) in inserted if job_id in unfinished]
            if active:
                db.execute(f"INSERT OR IGNORE INTO active_jobs VALUES {_marks(len(active), 2)}",
                           [value for row in active for value in row])
            kept = [(job_id, submissions[job_id]) for job_id, _ in active if job_id in submissions]
            if kept:
                db.execute(f"INSERT OR IGNORE INTO submissions VALUES {_marks(len(kept), 2)}",
                           [value for row in kept for value in row])


def _expire(db: sqlite3.Connection, before: float) -> None:
    """Delete the completed jobs last updated before `before` (a Unix time) that nothing can re-drive."""
    cutoff = progress.timestamp(datetime.fromtimestamp(before, timezone.utc))
    with db:
        db.execute("BEGIN IMMEDIATE")
        expired = db.execute("DELETE FROM jobs WHERE json_extract(record, '$.state') = 'completed' "
                             "AND json_extract(record, '$.updated_at') < ? "
                             "AND coalesce(json_extract(record, '$.delivery.state'), '') != 'waiting' "
                             "RETURNING job_id", (cutoff,)).fetchall()
        progress.drop_rows(db, [job_id for (job_id,) in expired])


def _marks(rows: int, columns: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return ",".join([row] * rows)


class SqliteJobStore(JobStore):
    def __init__(self, path: Path, *, ttl_seconds: int | None = None, sweep_seconds: float = 60.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Completed jobs (with no delivery still waiting) are deleted this long after their last
        # update, swept at most every `sweep_seconds` as new jobs are stored.
        self.ttl_seconds, self.sweep_seconds = ttl_seconds, sweep_seconds
        self._swept_at = float("-inf")
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()
        self._pending: list[tuple[JobRecord, bytes | None, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._operations: _Batch = []
        self._operator: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._db)

        return await asyncio.to_thread(locked)

    async def create(self, record: JobRecord, *, submission: bytes | None = None) -> None:
        """Group commit: inserts that arrive together share one transaction."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, submission, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_inserts())
        await done

    async def _flush_inserts(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            # Serialized here, so the database thread runs one statement per table and batch and
            # waits for the interpreter lock a few times per batch, not a few times per row.
            rows = [(record.job_id, record.model_dump_json()) for record, _, _ in batch]
            unfinished = {record.job_id: record.tenant for record, _, _ in batch if not record.finished()}
            submissions = {record.job_id: submission for record, submission, _ in batch if submission is not None}
            try:
                await self._run(lambda db: _insert_new(db, rows, unfinished, submissions))
                if self.ttl_seconds and time.monotonic() - self._swept_at >= self.sweep_seconds:
                    self._swept_at = time.monotonic()
                    await self._run(lambda db: _expire(db, time.time() - self.ttl_seconds))
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for *_, done in batch:
                    done.set_exception(exc)
            else:
                for *_, done in batch:
                    done.set_result(None)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._grouped(job_id, _read)

    async def transform(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> bool:
        """Read-modify-write inside an immediate transaction, so concurrent processes never interleave."""
        def operation(record: JobRecord | None) -> tuple[JobRecord | None, bool]:
            updated = change(record) if record is not None else None
            return (None if updated is record else updated), updated is not None

        return await self._grouped(job_id, operation)

    async def _grouped(self, job_id: str, operation: _Operation | progress.StageOperation) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._operations.append((job_id, operation, done))
        if self._operator is None or self._operator.done():
            self._operator = asyncio.create_task(self._flush_operations())
        return await done

    async def _flush_operations(self) -> None:
        while self._operations:
            batch, self._operations = self._operations, []
            try:
                outcomes = await self._run(lambda db: _apply_in_one_transaction(db, batch))
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (*_, done), (ok, value) in zip(batch, outcomes):
                if done.done():
                    continue
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    async def claim_attempt(self, job_id: str, stage: str, *, max_attempts: int, skip_done: bool) -> Claim:
        """Read the stage's progress and count the attempt in one grouped operation, on its row."""
        return await self._grouped(job_id, progress.StageClaim(stage, max_attempts, skip_done))

    async def update_stage(
        self, job_id: str, stage: str, state: StageState, *, attempts: int = 0, error: str | None = None,
        waiting_for: str | None = None, meta: dict[str, Any] | None = None,
    ) -> None:
        """As `JobStore.update_stage`, written to the stage's row."""
        await self._grouped(job_id, progress.StageWrite(stage, state, attempts, error, waiting_for, meta))

    async def finish(self, job_id: str, stage: str, *, attempts: int, summary: str | None,
                     meta: dict[str, Any] | None) -> None:
        await self._grouped(job_id, progress.StageFinish(stage, attempts, summary, meta))

    async def blobs_of(self, job_id: str) -> list[BlobRef]:
        return await self._grouped(job_id, progress.BlobsRead())

    async def cancelled_jobs(self, job_ids: list[str]) -> set[str]:
        """Asked of the job state alone, without reading whole records."""
        def query(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for chunk in progress.chunks(job_ids):
                found.update(job_id for (job_id,) in db.execute(
                    f"SELECT job_id FROM jobs WHERE job_id IN ({','.join('?' * len(chunk))}) "
                    "AND json_extract(record, '$.state') = 'cancelled'", chunk))
            return found

        return await self._run(query) if job_ids else set()

    async def schedule_delivery(self, job_id: str, *, host: str, due: float) -> None:
        await self._run(lambda db: db.execute("INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?)", (job_id, host, due)))

    async def unschedule_delivery(self, job_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,)))

    async def delivery_hosts(self) -> list[str]:
        return await self._run(lambda db: [row[0] for row in db.execute("SELECT DISTINCT host FROM deliveries")])

    async def claim_due_deliveries(self, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        return await self._claim_deliveries("due <= ?", (now,), now, limit=limit, lease_seconds=lease_seconds)

    async def claim_host_deliveries(self, host: str, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        # Leased ones are included: a notifier skips what it is sending itself, and across replicas
        # a release may send one twice, with the same webhook-id for receivers to drop.
        return await self._claim_deliveries("host = ?", (host,), now, limit=limit, lease_seconds=lease_seconds)

    async def _claim_deliveries(self, where: str, args: tuple[Any, ...], now: float, *, limit: int,
                                lease_seconds: float) -> list[str]:
        def claim(db: sqlite3.Connection) -> list[str]:
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [row[0] for row in db.execute(
                    f"SELECT job_id FROM deliveries WHERE {where} ORDER BY due LIMIT ?", (*args, limit))]
                db.executemany("UPDATE deliveries SET due = ? WHERE job_id = ?",
                               [(now + lease_seconds, job_id) for job_id in ids])
                db.execute("COMMIT")
                return ids
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(claim)

    async def claim_idempotency_key(self, tenant: str, key: str, *, digest: str, job_id: str,
                                    ttl_seconds: float) -> tuple[str, str]:
        def claim(db: sqlite3.Connection) -> tuple[str, str]:
            now = time.time()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM idempotency_keys WHERE created < ?", (now - ttl_seconds,))
                db.execute("INSERT OR IGNORE INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
                           (tenant, key, digest, job_id, now))
                return db.execute("SELECT digest, job_id FROM idempotency_keys WHERE tenant = ? AND key = ?",
                                  (tenant, key)).fetchone()

        return tuple(await self._run(claim))  # type: ignore[return-value]

    async def release_idempotency_key(self, tenant: str, key: str, *, job_id: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM idempotency_keys WHERE tenant = ? AND key = ? AND job_id = ?",
                           (tenant, key, job_id))

        await self._run(release)

    async def discard(self, job_id: str) -> None:
        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                for table in ("jobs", "stage_progress", "active_jobs", "submissions", "dead_letters", "deliveries"):
                    db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))

        await self._run(forget)

    async def unfinished_submissions(self) -> list[tuple[str, bytes]]:
        return await self._run(lambda db: db.execute(
            "SELECT s.job_id, s.event FROM submissions s JOIN active_jobs a ON a.job_id = s.job_id").fetchall())

    async def list_jobs(self, tenant: str, *, state: JobState | None = None, since: datetime | None = None,
                        before: str | None = None, limit: int = 50, document: str | None = None) -> list[JobRecord]:
        where, args = ["json_extract(record, '$.tenant') = ?"], [tenant]
        if document is not None:
            where.append("json_extract(record, '$.document_id') = ?")
            args.append(document)
        if state is not None:
            where.append("json_extract(record, '$.state') = ?")
            args.append(state.value)
        if since is not None:  # a job is as recent as its latest stage row
            where.append("(json_extract(record, '$.updated_at') >= ? OR EXISTS (SELECT 1 FROM stage_progress p "
                         "WHERE p.job_id = jobs.job_id AND p.updated_at >= ?))")
            args += [progress.timestamp(since)] * 2
        if before is not None:
            created, _, job_id = before.partition("|")
            where.append("(json_extract(record, '$.created_at'), job_id) < (?, ?)")
            args += [created, job_id]
        query = (f"SELECT job_id, record FROM jobs WHERE {' AND '.join(where)} "
                 "ORDER BY json_extract(record, '$.created_at') DESC, job_id DESC LIMIT ?")

        def read(db: sqlite3.Connection) -> list[JobRecord]:
            raw = db.execute(query, [*args, limit]).fetchall()
            found = progress.assemble(raw, progress.stage_rows(db, [job_id for job_id, _ in raw]))
            return [found[job_id] for job_id, _ in raw]

        return await self._run(read)

    async def keep_dead_letter(self, stage: str, letter: bytes, *, job_id: str | None) -> None:
        def keep(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO dead_letters (stage, job_id, letter) VALUES (?, ?, ?)", (stage, job_id, letter))

        await self._run(keep)

    async def dead_letters(self) -> list[tuple[str, bytes]]:
        return await self._run(lambda db: db.execute("SELECT stage, letter FROM dead_letters ORDER BY id").fetchall())

    async def active_jobs(self, tenant: str) -> int:
        return await self._run(lambda db: db.execute(
            "SELECT count(*) FROM active_jobs WHERE tenant = ?", (tenant,)).fetchone()[0])

    async def record_usage(self, tenant: str, job_id: str, stage: str, *, day: str, tokens: int, calls: int) -> None:
        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO usage (tenant, day, job_id, stage, tokens, calls) VALUES (?, ?, ?, ?, ?, ?)",
                           (tenant, day, job_id, stage, tokens, calls))

        await self._run(insert)

    async def tenant_usage(self, tenant: str, day: str) -> UsageTotal:
        row = await self._run(lambda db: db.execute(
            "SELECT coalesce(sum(tokens), 0), coalesce(sum(calls), 0), count(DISTINCT job_id) FROM usage "
            "WHERE tenant = ? AND day = ?", (tenant, day)).fetchone())
        return UsageTotal(*row)

    async def job_usage(self, job_id: str) -> UsageTotal:
        row = await self._run(lambda db: db.execute(
            "SELECT coalesce(sum(tokens), 0), coalesce(sum(calls), 0), count(DISTINCT job_id) FROM usage "
            "WHERE job_id = ?", (job_id,)).fetchone())
        return UsageTotal(*row)

    async def ping(self) -> bool:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())
        return True

    async def close(self) -> None:
        await self._run(lambda db: db.close())

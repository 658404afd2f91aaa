"""SQLite job store: the default, for one machine (several processes share the file, WAL mode)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.stores import records
from conveyor.stores.base import JobRecord, JobStore, StageState

_SCHEMA = "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, record TEXT NOT NULL)"


class SqliteJobStore(JobStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._db)

        return await asyncio.to_thread(locked)

    async def create(self, record: JobRecord) -> None:
        """Group commit: inserts that arrive together share one transaction."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record.job_id, record.model_dump_json(), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_inserts())
        await done

    async def _flush_inserts(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []

            def insert(db: sqlite3.Connection) -> None:
                with db:  # one transaction for the whole batch
                    db.execute("BEGIN")
                    db.executemany("INSERT OR IGNORE INTO jobs VALUES (?, ?)", [(j, r) for j, r, _ in batch])

            try:
                await self._run(insert)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for *_, done in batch:
                    done.set_exception(exc)
            else:
                for *_, done in batch:
                    done.set_result(None)

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._run(lambda db: db.execute(
            "SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone())
        return JobRecord.model_validate_json(row[0]) if row else None

    async def _transform(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> bool:
        """Read-modify-write in one immediate transaction, so concurrent processes never interleave."""

        def apply(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                updated = change(JobRecord.model_validate_json(row[0])) if row else None
                if updated is not None:
                    db.execute("UPDATE jobs SET record = ? WHERE job_id = ?", (updated.model_dump_json(), job_id))
                db.execute("COMMIT")
                return updated is not None
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(apply)

    async def update_stage(self, job_id: str, stage: str, state: StageState, *, attempts: int = 0,
                           error: str | None = None) -> None:
        await self._transform(job_id, lambda r: records.with_stage(r, stage, state, attempts=attempts, error=error))

    async def complete(self, job_id: str, *, summary: str, meta: dict[str, Any] | None = None) -> None:
        await self._transform(job_id, lambda r: records.completed(r, summary=summary, meta=meta))

    async def mark_notified(self, job_id: str) -> bool:
        return await self._transform(job_id, lambda r: None if r.notified_at else records.notified(r))

    async def ping(self) -> bool:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())
        return True

    async def close(self) -> None:
        await self._run(lambda db: db.close())

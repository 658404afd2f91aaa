"""The JobStore contract, met by SQLite and by Redis (a real redis-server, Debian's, on a free port)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis

from conveyor.errors import TransientError
from conveyor.events import BlobRef, utcnow
from conveyor.cli.embedded_broker import free_port
from conveyor.stores import records
from conveyor.stores.base import Delivery, DeliveryState, JobRecord, JobState, JobStore, StageProgress, StageState
from conveyor.stores.redis_store import RedisJobStore
from conveyor.stores.sqlite_store import SqliteJobStore
from conveyor.usage import UsageTotal

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server with persistence off; yields its URL."""
    assert shutil.which(REDIS_SERVER), "redis-server is missing: ./scripts/test installs Debian's redis-server"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = SyncRedis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["redis", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[JobStore]:
    """Each backend in turn; a Redis store gets a prefix of its own, so tests never share keys."""
    if request.param == "redis":
        s: JobStore = RedisJobStore(request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex[:8]}:job:")
    else:
        s = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    await s.close()


def _record(job_id: str | None = None, **fields: object) -> JobRecord:
    return JobRecord(job_id=job_id or uuid.uuid4().hex, user_id="u1", **fields)


async def test_create_get_roundtrip(store: JobStore) -> None:
    record = _record(callback_url="https://example.com/hook", meta={"size": 12, "tags": []})
    await store.create(record)
    loaded = await store.get(record.job_id)
    assert loaded == record
    assert await store.get("no-such-job") is None


async def test_create_is_idempotent(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    await store.update_stage(record.job_id, "extractor", StageState.running, attempts=1)
    await store.create(record)  # a redelivered submission must not reset progress
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.stages["extractor"].state == StageState.running


async def test_concurrent_creates_land_once_each_with_their_count(store: JobStore) -> None:
    # 900 at once: one SQLite group, more rows than one INSERT statement carries, repeats inside it.
    records = [_record(tenant="acme") for _ in range(900)]
    await store.create(records[0])
    await store.update_stage(records[0].job_id, "extractor", StageState.running, attempts=1)
    await asyncio.gather(*(store.create(record) for record in [*records, *records[:50]]))
    assert await store.active_jobs("acme") == 900
    loaded = await store.get(records[0].job_id)
    assert loaded is not None and loaded.stages["extractor"].state == StageState.running  # not reset
    assert await store.get(records[-1].job_id) == records[-1]


async def test_an_unfinished_jobs_submission_is_kept_until_it_finishes(store: JobStore) -> None:
    kept, finished, without = _record(tenant="acme"), _record(tenant="acme"), _record(tenant="acme")
    await store.create(kept, submission=b'{"job_id": "kept"}')
    await store.create(finished, submission=b'{"job_id": "finished"}')
    await store.create(without)
    await store.create(kept, submission=b"a repeated create changes nothing")
    await store.complete(finished.job_id, summary="s")
    assert await store.unfinished_submissions() == [(kept.job_id, b'{"job_id": "kept"}')]

    await store.discard(kept.job_id)  # never accepted: nothing of it is left
    assert await store.get(kept.job_id) is None
    assert await store.unfinished_submissions() == []
    assert await store.active_jobs("acme") == 1  # `without` only


async def test_dead_letter_copies_stay_until_their_job_completes(store: JobStore) -> None:
    failed, replayed = _record(), _record()
    for record in (failed, replayed):
        await store.create(record)
        await store.update_stage(record.job_id, "extractor", StageState.failed, attempts=1, error="bad")
    await store.keep_dead_letter("extractor", b'{"a": 1}', job_id=failed.job_id)
    await store.keep_dead_letter("summarizer", b'{"b": 2}', job_id=replayed.job_id)
    await store.keep_dead_letter("extractor", b'{"c": 3}', job_id=None)  # undecodable: no job
    await store.complete(replayed.job_id, summary="s")  # replayed, and done this time
    assert await store.dead_letters() == [("extractor", b'{"a": 1}'), ("extractor", b'{"c": 3}')]


async def test_sqlite_expires_completed_jobs_nothing_can_redrive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_seconds=1, sweep_seconds=0)
    done, failed, waiting, running = (_record() for _ in range(4))
    for record in (done, failed, waiting, running):
        await store.create(record)
    await store.complete(done.job_id, summary="s")
    await store.update_stage(failed.job_id, "extractor", StageState.failed, attempts=1, error="bad")
    await store.complete(waiting.job_id, summary="s")
    await store.set_delivery(waiting.job_id, Delivery(state=DeliveryState.waiting, webhook_id=waiting.job_id))
    await asyncio.sleep(1.2)
    await store.create(_record())  # stores sweep as new jobs arrive
    kept = {job.job_id for job in (done, failed, waiting, running) if await store.get(job.job_id)}
    assert kept == {failed.job_id, waiting.job_id, running.job_id}
    await store.close()


async def test_a_tenants_jobs_are_listed_newest_first_filtered_and_paged(store: JobStore) -> None:
    acme = []
    for _ in range(5):
        acme.append(_record(tenant="acme"))
        await store.create(acme[-1])
        await asyncio.sleep(0.002)  # distinct creation times
    await store.create(_record(tenant="globex"))
    await store.update_stage(acme[1].job_id, "extractor", StageState.failed, attempts=1, error="bad")
    middle = utcnow()
    await store.update_stage(acme[3].job_id, "extractor", StageState.failed, attempts=1, error="bad")
    newest_first = [r.job_id for r in reversed(acme)]

    assert [r.job_id for r in await store.list_jobs("acme")] == newest_first
    assert [r.job_id for r in await store.list_jobs("acme", state=JobState.failed)] == [acme[3].job_id, acme[1].job_id]
    assert [r.job_id for r in await store.list_jobs("acme", state=JobState.failed, since=middle)] == [acme[3].job_id]
    first = await store.list_jobs("acme", limit=2)
    rest = await store.list_jobs("acme", before=first[-1].page_key(), limit=10)
    assert [r.job_id for r in [*first, *rest]] == newest_first
    assert await store.list_jobs("nobody") == []


async def test_a_documents_versions_are_listed_apart_and_a_discarded_version_leaves_every_listing(
        store: JobStore) -> None:
    versions = []
    for _ in range(3):
        versions.append(_record(tenant="acme").model_copy(update={"document_id": "handbook/intro"}))
        await store.create(versions[-1], submission=b"{}")
        await asyncio.sleep(0.002)
    await store.create(_record(tenant="acme").model_copy(update={"document_id": "other"}))
    await store.create(_record(tenant="globex").model_copy(update={"document_id": "handbook/intro"}))
    await store.keep_dead_letter("extractor", b'{"letter": 1}', job_id=versions[0].job_id)
    await store.schedule_delivery(versions[0].job_id, host="example.com:443", due=0)
    listed = await store.list_jobs("acme", document="handbook/intro")
    assert [r.job_id for r in listed] == [v.job_id for v in reversed(versions)]

    await store.discard(versions[0].job_id)
    assert [r.job_id for r in await store.list_jobs("acme", document="handbook/intro")] == \
        [versions[2].job_id, versions[1].job_id]
    assert versions[0].job_id not in {r.job_id for r in await store.list_jobs("acme")}
    assert await store.dead_letters() == []
    assert await store.claim_due_deliveries(time.time(), limit=10, lease_seconds=5) == []
    assert len(await store.list_jobs("globex", document="handbook/intro")) == 1


async def test_an_erasure_forgets_the_versions_submitted_before_it_and_keeps_a_later_one(store: JobStore) -> None:
    from conveyor.stores.documents import forget

    def version() -> JobRecord:
        return _record(tenant="acme").model_copy(update={"document_id": "handbook"})

    earlier = [version(), version()]
    for record in earlier:
        await store.create(record)
    await asyncio.sleep(0.002)
    erased_at = utcnow()
    await asyncio.sleep(0.002)
    later = version()
    await store.create(later)
    assert await forget(store, None, "acme", "handbook", submitted_before=erased_at) == 2
    assert [r.job_id for r in await store.list_jobs("acme", document="handbook")] == [later.job_id]
    assert [await store.get(r.job_id) for r in earlier] == [None, None]


async def test_a_cancelled_job_is_skipped_and_nothing_more_is_written_for_it(store: JobStore) -> None:
    record, done = _record(tenant="acme"), _record(tenant="acme")
    for job in (record, done):
        await store.create(job)
    await store.complete(done.job_id, summary="s")
    cancelled = await store.cancel(record.job_id)
    assert cancelled is not None and cancelled.state == JobState.cancelled
    assert (await store.cancel(done.job_id)).state == JobState.completed  # too late to cancel
    assert await store.cancelled_jobs([record.job_id, done.job_id, "nope"]) == {record.job_id}
    assert (await store.claim_attempt(record.job_id, "extractor", max_attempts=3, skip_done=False)).action == "skip"
    await store.update_stage(record.job_id, "extractor", StageState.done, attempts=1)
    await store.complete(record.job_id, summary="late")
    after = await store.get(record.job_id)
    assert after is not None and after.state == JobState.cancelled and after.summary is None and not after.stages
    assert await store.active_jobs("acme") == 0


async def test_a_restarted_job_runs_every_stage_again(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    await store.update_stage(record.job_id, "extractor", StageState.done, attempts=1)
    await store.update_stage(record.job_id, "summarizer", StageState.done, attempts=2)
    await store.transform(record.job_id, records.restarted)
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.state == JobState.queued
    assert {name: (p.state, p.attempts) for name, p in loaded.stages.items()} == {
        "extractor": (StageState.pending, 0), "summarizer": (StageState.pending, 0)}
    claim = await store.claim_attempt(record.job_id, "summarizer", max_attempts=3, skip_done=True)
    assert claim.action == "run"  # not skipped: its output was lost with the broker


async def test_update_stage_transitions(store: JobStore) -> None:
    record = _record()
    await store.create(record)

    await store.update_stage(record.job_id, "extractor", StageState.running, attempts=1)
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.state == JobState.running
    assert loaded.stages["extractor"].attempts == 1

    await store.update_stage(record.job_id, "extractor", StageState.done, attempts=1)
    # A redelivered event must not move a finished stage backwards.
    await store.update_stage(record.job_id, "extractor", StageState.running, attempts=2)
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.stages["extractor"].state == StageState.done

    await store.update_stage(record.job_id, "summarizer", StageState.failed, attempts=5, error="boom")
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.state == JobState.failed
    assert loaded.error == "summarizer: boom"
    assert loaded.stages["summarizer"].error == "boom"

    # Replaying the dead letter brings the job back to life.
    await store.update_stage(record.job_id, "summarizer", StageState.running, attempts=6)
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.state == JobState.running and loaded.error is None


async def test_usage_sums_per_tenant_and_day_and_per_job(store: JobStore) -> None:
    job = uuid.uuid4().hex
    await store.record_usage("acme", job, "summarizer", day="2026-12-03", tokens=120, calls=2)
    await store.record_usage("acme", job, "summarizer", day="2026-12-03", tokens=30, calls=1)  # a retry's run
    await store.record_usage("acme", "other", "embedder", day="2026-12-03", tokens=50, calls=0)
    await store.record_usage("acme", job, "embedder", day="2026-12-04", tokens=8, calls=1)
    await store.record_usage("globex", "theirs", "summarizer", day="2026-12-03", tokens=999, calls=9)
    assert await store.tenant_usage("acme", "2026-12-03") == UsageTotal(tokens=200, calls=3, jobs=2)
    assert await store.tenant_usage("acme", "2026-12-04") == UsageTotal(tokens=8, calls=1, jobs=1)
    assert await store.tenant_usage("acme", "2026-12-05") == UsageTotal()
    assert await store.job_usage(job) == UsageTotal(tokens=158, calls=4, jobs=1)
    assert await store.job_usage("never-ran") == UsageTotal()


async def test_update_stage_is_idempotent(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    for _ in range(3):
        await store.update_stage(record.job_id, "extractor", StageState.running, attempts=2)
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.state == JobState.running
    assert loaded.stages == {"extractor": loaded.stages["extractor"]}
    assert loaded.stages["extractor"].attempts == 2


async def test_a_stage_done_gives_the_job_its_outputs_meta(store: JobStore) -> None:
    record = _record()
    await store.create(record.model_copy(update={"meta": {"kind": "text"}}))
    await store.update_stage(record.job_id, "embedder", StageState.running, attempts=1, meta={"ignored": 1})
    await store.update_stage(record.job_id, "embedder", StageState.done, attempts=1,
                             meta={"kind": "text", "embedded_chunks": 3})
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.meta == {"kind": "text", "embedded_chunks": 3}


async def test_writes_to_unknown_jobs_create_nothing(store: JobStore) -> None:
    await store.update_stage("ghost", "extractor", StageState.running, attempts=1)
    await store.complete("ghost", summary="nothing")
    assert await store.mark_notified("ghost") is False
    assert await store.get("ghost") is None


async def test_redis_writes_to_unknown_jobs_leave_no_key(redis_url: str) -> None:
    store = RedisJobStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}:job:")
    await store.update_stage("ghost", "extractor", StageState.running, attempts=1)
    assert SyncRedis.from_url(redis_url).exists(store.key("ghost")) == 0
    await store.close()


async def test_complete(store: JobStore) -> None:
    record = _record(meta={"kind": "html"})
    await store.create(record)
    await store.update_stage(record.job_id, "summarizer", StageState.done, attempts=1)
    await store.complete(record.job_id, summary="Short.", meta={"backend": "textrank"})
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.state == JobState.completed
    assert loaded.summary == "Short."
    assert loaded.meta == {"kind": "html", "backend": "textrank"}
    assert loaded.error is None


async def test_mark_notified_only_once(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    assert await store.mark_notified(record.job_id) is True
    assert await store.mark_notified(record.job_id) is False
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.notified_at is not None
    first = loaded.notified_at
    # Later writes keep the claim.
    await store.complete(record.job_id, summary="s")
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.notified_at == first


async def test_mark_notified_concurrently_has_one_winner(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    results = await asyncio.gather(*(store.mark_notified(record.job_id) for _ in range(50)))
    assert results.count(True) == 1


async def test_concurrent_update_stage_loses_nothing(store: JobStore) -> None:
    """50 writers at once: every stage they wrote is there, the record is whole and consistent."""
    record = _record()
    await store.create(record)
    names = [f"stage-{i}" for i in range(50)]
    await asyncio.gather(*(
        store.update_stage(record.job_id, name, StageState.running, attempts=i + 1)
        for i, name in enumerate(names)
    ))
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert sorted(loaded.stages) == sorted(names)
    assert all(loaded.stages[n].attempts == i + 1 for i, n in enumerate(names))
    assert loaded.state == JobState.running


async def test_concurrent_attempts_on_one_stage_keep_the_highest(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    await asyncio.gather(*(
        store.update_stage(record.job_id, "extractor", StageState.running, attempts=n) for n in range(1, 51)
    ))
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.stages["extractor"].attempts == 50
    assert loaded.stages["extractor"].state == StageState.running


@pytest.fixture
async def expiring(redis_url: str) -> AsyncIterator[tuple[RedisJobStore, SyncRedis]]:
    """A Redis store whose jobs expire 100 s after their last write, and a plain client to look."""
    store = RedisJobStore(redis_url, prefix=f"ttl:{uuid.uuid4().hex[:8]}:", ttl_seconds=100)
    sync = SyncRedis.from_url(redis_url)
    yield store, sync
    sync.close()
    await store.close()


async def test_ttl_applies_on_every_write(expiring: tuple[RedisJobStore, SyncRedis]) -> None:
    store, sync = expiring
    record = _record()
    await store.create(record)
    key = store.key(record.job_id)
    assert 0 < sync.ttl(key) <= 100
    sync.expire(key, 5)
    await store.update_stage(record.job_id, "extractor", StageState.running, attempts=1)
    assert sync.ttl(key) > 5  # refreshed by the write
    sync.expire(key, 5)
    assert await store.mark_notified(record.job_id) is True
    assert sync.ttl(key) > 5


async def test_a_job_that_can_still_be_redriven_does_not_expire(expiring: tuple[RedisJobStore, SyncRedis]) -> None:
    store, sync = expiring
    record = _record()
    await store.create(record)
    key = store.key(record.job_id)
    waiting = Delivery(state=DeliveryState.waiting, webhook_id=record.job_id)
    await store.set_delivery(record.job_id, waiting)
    assert sync.ttl(key) == -1  # a waiting delivery can still send it
    await store.set_delivery(record.job_id, waiting.model_copy(update={"state": DeliveryState.delivered}))
    assert 0 < sync.ttl(key) <= 100
    await store.update_stage(record.job_id, "summarizer", StageState.failed, attempts=5, error="boom")
    assert sync.ttl(key) == -1  # dead-lettered: a replay needs the record


async def test_keys_carry_the_prefix(redis_url: str) -> None:
    store = RedisJobStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}:job:")
    record = _record(job_id="abc")
    await store.create(record)
    sync = SyncRedis.from_url(redis_url, decode_responses=True)
    try:
        keys = sorted(sync.keys(f"{store.prefix}*"))
        # The job, its tenant's active set and its tenant's list.
        assert keys == [f"{store.prefix}abc", f"{store.prefix}active:default", f"{store.prefix}jobs:default"]
        assert sync.ttl(keys[0]) == -1  # no TTL unless asked for
    finally:
        sync.close()
        await store.close()


async def test_gives_up_after_too_many_conflicts(redis_url: str) -> None:
    store = RedisJobStore(redis_url, prefix=f"giveup:{uuid.uuid4().hex[:8]}:", max_transaction_attempts=1)
    sync = SyncRedis.from_url(redis_url)
    try:
        record = _record()
        await store.create(record)
        original = store._redis.pipeline

        def racing_pipeline(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            pipe = original(*args, **kwargs)
            hgetall = pipe.hgetall

            async def hgetall_then_interfere(key: str):  # type: ignore[no-untyped-def]
                fields = await hgetall(key)
                sync.hset(key, "interference", "1")  # another writer between WATCH and EXEC
                return fields

            pipe.hgetall = hgetall_then_interfere  # type: ignore[method-assign]
            return pipe

        store._redis.pipeline = racing_pipeline  # type: ignore[method-assign]
        with pytest.raises(TransientError):
            await store.update_stage(record.job_id, "extractor", StageState.running, attempts=1)
    finally:
        sync.close()
        await store.close()


async def test_ping(store: JobStore) -> None:
    assert await store.ping() is True


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        RedisJobStore("redis://127.0.0.1:1/0", ttl_seconds=0)
    with pytest.raises(ValueError):
        RedisJobStore("redis://127.0.0.1:1/0", max_transaction_attempts=0)


async def test_many_concurrent_updates_all_land(store: JobStore) -> None:
    """Hundreds of updates in flight at once (SQLite groups them into shared transactions)."""
    jobs = [f"many-{uuid.uuid4().hex[:8]}" for _ in range(200)]
    await asyncio.gather(*(store.create(JobRecord(job_id=j, user_id="u")) for j in jobs))
    await asyncio.gather(*(store.update_stage(j, "extractor", StageState.running, attempts=1) for j in jobs))
    await asyncio.gather(*(store.update_stage(j, "extractor", StageState.done, attempts=1) for j in jobs),
                         *(store.update_stage(j, "summarizer", StageState.running, attempts=2) for j in jobs))
    records = await asyncio.gather(*(store.get(j) for j in jobs))
    for record in records:
        assert record is not None
        assert record.stages["extractor"].state == StageState.done
        assert record.stages["summarizer"].attempts == 2


async def test_sqlite_grouped_operation_that_fails_fails_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        await store.create(JobRecord(job_id="a", user_id="u"))
        await store.create(JobRecord(job_id="b", user_id="u"))

        def broken(record: JobRecord) -> JobRecord:
            raise ValueError("bad change")

        results = await asyncio.gather(
            store.transform("a", broken),
            store.update_stage("b", "extractor", StageState.done, attempts=1),
            return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] is None
        b = await store.get("b")
        assert b is not None and b.stages["extractor"].state == StageState.done
    finally:
        await store.close()


async def test_claims_count_attempts_durably(store: JobStore) -> None:
    job = f"claim-{uuid.uuid4().hex[:8]}"
    await store.create(JobRecord(job_id=job, user_id="u"))
    first = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    assert (first.action, first.attempt) == ("run", 1)
    record = await store.get(job)
    assert record and record.stages["extractor"].state == StageState.running
    assert record.stages["extractor"].attempts == 1, "counted before any handler runs"
    second = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    third = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    assert (second.attempt, third.attempt) == (2, 3)
    died = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    assert (died.action, died.attempt) == ("died", 3)
    await store.update_stage(job, "extractor", StageState.failed, attempts=3, error="WorkerDied: ...")
    replayed = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    assert (replayed.action, replayed.attempt) == ("run", 1), "a replayed dead letter starts afresh"
    await store.update_stage(job, "extractor", StageState.done, attempts=1)
    assert (await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=True)).action == "skip"
    again = await store.claim_attempt(job, "extractor", max_attempts=3, skip_done=False)
    assert again.action == "run"
    done = await store.get(job)
    assert done and done.stages["extractor"].state == StageState.done, "a finished stage never moves back"


async def test_the_delivery_schedule_hands_each_due_delivery_to_one_claimer(store: JobStore) -> None:
    await store.schedule_delivery("due-1", host="a:80", due=100.0)
    await store.schedule_delivery("due-2", host="b:80", due=150.0)
    await store.schedule_delivery("later", host="a:80", due=500.0)

    assert sorted(await store.delivery_hosts()) == ["a:80", "b:80"]
    assert await store.claim_due_deliveries(200.0, limit=10, lease_seconds=60) == ["due-1", "due-2"]
    # Leased until 260: nobody else takes them meanwhile; after the lease they are due again.
    assert await store.claim_due_deliveries(250.0, limit=10, lease_seconds=60) == []
    assert sorted(await store.claim_due_deliveries(261.0, limit=10, lease_seconds=60)) == ["due-1", "due-2"]
    # A host's release takes its deliveries whatever their due time.
    assert sorted(await store.claim_host_deliveries("a:80", 300.0, limit=10, lease_seconds=60)) == ["due-1", "later"]
    await store.unschedule_delivery("due-1")
    await store.unschedule_delivery("due-2")
    assert await store.claim_host_deliveries("a:80", 1000.0, limit=10, lease_seconds=60) == ["later"]
    assert await store.delivery_hosts() == ["a:80"]


async def test_waiting_gives_back_the_interrupted_attempt_and_names_the_dependency(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    claim = await store.claim_attempt(record.job_id, "summarizer", max_attempts=3, skip_done=True)
    await store.update_stage(record.job_id, "summarizer", StageState.waiting, attempts=claim.attempt - 1,
                             error="503", waiting_for="llm api/v1")

    waiting = await store.get(record.job_id)
    assert waiting is not None and waiting.state == JobState.waiting and waiting.redrivable()
    progress = waiting.stages["summarizer"]
    assert (progress.attempts, progress.waiting_for) == (0, "llm api/v1") and progress.waiting_since
    # Waiting out any number of outages never reaches "worker died".
    for _ in range(5):
        claim = await store.claim_attempt(record.job_id, "summarizer", max_attempts=3, skip_done=True)
        assert (claim.action, claim.attempt) == ("run", 1)
        await store.update_stage(record.job_id, "summarizer", StageState.waiting, attempts=0, waiting_for="llm api/v1")
    await store.update_stage(record.job_id, "summarizer", StageState.done, attempts=1)
    done = await store.get(record.job_id)
    assert done is not None and done.state == JobState.running and done.stages["summarizer"].waiting_for is None


async def test_active_jobs_count_a_tenants_unfinished_jobs(store: JobStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(4)]
    for job_id in ids[:3]:
        await store.create(_record(job_id, tenant="acme"))
    await store.create(_record(ids[3], tenant="globex"))
    await store.create(_record(ids[0], tenant="acme"))  # a repeated create counts once
    assert (await store.active_jobs("acme"), await store.active_jobs("globex"), await store.active_jobs("x")) == (3, 1, 0)

    await store.complete(ids[0], summary="s")
    await store.update_stage(ids[1], "extractor", StageState.failed, attempts=1, error="bad")
    await store.update_stage(ids[2], "extractor", StageState.waiting, attempts=0, waiting_for="llm")
    assert await store.active_jobs("acme") == 1  # waiting is unfinished; completed and failed are not

    # A replayed dead letter brings the failed job back, and its count with it.
    await store.update_stage(ids[1], "extractor", StageState.running, attempts=1)
    assert await store.active_jobs("acme") == 2
    await store.complete(ids[1], summary="s")
    await store.complete(ids[1], summary="s")  # a redelivered completion
    assert await store.active_jobs("acme") == 1 and await store.active_jobs("globex") == 1


async def test_an_idempotency_key_binds_to_its_first_claim_until_it_expires_or_is_released(store: JobStore) -> None:
    first = await store.claim_idempotency_key("acme", "k", digest="d1", job_id="j1", ttl_seconds=60)
    again = await asyncio.gather(*[store.claim_idempotency_key("acme", "k", digest="d2", job_id=f"x{i}", ttl_seconds=60)
                                   for i in range(10)])
    other_tenant = await store.claim_idempotency_key("globex", "k", digest="d3", job_id="j3", ttl_seconds=60)
    assert first == ("d1", "j1") and set(again) == {("d1", "j1")} and other_tenant == ("d3", "j3")

    await store.release_idempotency_key("acme", "k", job_id="someone-else")  # not the holder: no effect
    assert await store.claim_idempotency_key("acme", "k", digest="d4", job_id="j4", ttl_seconds=60) == ("d1", "j1")
    await store.release_idempotency_key("acme", "k", job_id="j1")
    assert await store.claim_idempotency_key("acme", "k", digest="d5", job_id="j5", ttl_seconds=60) == ("d5", "j5")

    await store.claim_idempotency_key("acme", "short", digest="d6", job_id="j6", ttl_seconds=0.2)
    await asyncio.sleep(0.4)
    assert await store.claim_idempotency_key("acme", "short", digest="d7", job_id="j7", ttl_seconds=0.2) == ("d7", "j7")


async def test_a_stage_only_change_counts_as_an_update_for_listings(store: JobStore) -> None:
    record = _record(tenant="acme")
    await store.create(record)
    await store.update_stage(record.job_id, "extractor", StageState.running, attempts=1)
    before = utcnow()
    await asyncio.sleep(0.002)
    await store.update_stage(record.job_id, "extractor", StageState.done, attempts=1)  # the job stays running
    loaded = await store.get(record.job_id)
    assert loaded is not None and loaded.state == JobState.running and loaded.updated_at > before
    assert [r.job_id for r in await store.list_jobs("acme", since=before)] == [record.job_id]
    listed = (await store.list_jobs("acme"))[0]
    assert listed.stages["extractor"].state == StageState.done and listed.updated_at == loaded.updated_at


async def test_stage_writes_and_whole_record_writes_of_one_job_in_one_group_all_land(store: JobStore) -> None:
    record = _record(stages={"extractor": StageProgress(), "summarizer": StageProgress()})
    await store.create(record)
    await store.claim_attempt(record.job_id, "extractor", max_attempts=3, skip_done=False)
    blob = BlobRef(uri="file:///tmp/x", size=1, sha256="0" * 64)
    await asyncio.gather(
        store.update_stage(record.job_id, "extractor", StageState.done, attempts=1, meta={"pages": 2}),
        store.transform(record.job_id, lambda r: records.with_blob(r, blob)),
        store.claim_attempt(record.job_id, "summarizer", max_attempts=3, skip_done=False),
    )
    # A later whole-record write, then a stage write: each sees what the one before wrote.
    await store.set_delivery(record.job_id, Delivery(state=DeliveryState.waiting, webhook_id=record.job_id))
    await store.update_stage(record.job_id, "summarizer", StageState.failed, attempts=1, error="bad")
    loaded = await store.get(record.job_id)
    assert loaded is not None
    assert loaded.stages["extractor"].state == StageState.done and loaded.meta == {"pages": 2}
    assert [b.uri for b in loaded.blobs] == [blob.uri] and loaded.delivery is not None
    assert (loaded.stages["summarizer"].state, loaded.stages["summarizer"].attempts) == (StageState.failed, 1)
    assert (loaded.state, loaded.error) == (JobState.failed, "summarizer: bad")
    assert await store.active_jobs(record.tenant) == 0, "a failure by a stage write ends the job's active count"


async def test_sqlite_keeps_stage_progress_in_rows_and_folds_them_into_whole_record_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    raw = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        job = _record(stages={"extractor": StageProgress()})
        await store.create(job)
        text_before = raw.execute("SELECT record FROM jobs").fetchone()[0]
        await store.claim_attempt(job.job_id, "extractor", max_attempts=3, skip_done=False)
        await store.update_stage(job.job_id, "extractor", StageState.running, attempts=1)
        assert raw.execute("SELECT stage, state, attempts FROM stage_progress").fetchall() == [("extractor", "running", 1)]
        record_json = json.loads(raw.execute("SELECT record FROM jobs").fetchone()[0])
        assert record_json["state"] == "running" and record_json["stages"] == json.loads(text_before)["stages"], \
            "the stage's progress is in its row; the record changed only for the job's own state"
        await store.mark_notified(job.job_id)  # a whole-record write
        assert raw.execute("SELECT count(*) FROM stage_progress").fetchone()[0] == 0
        folded = json.loads(raw.execute("SELECT record FROM jobs").fetchone()[0])
        assert (folded["stages"]["extractor"]["state"], folded["stages"]["extractor"]["attempts"]) == ("running", 1)
        second = await store.claim_attempt(job.job_id, "extractor", max_attempts=3, skip_done=False)
        assert second.attempt == 2, "the count goes on from the folded record"
        await store.discard(job.job_id)
        assert raw.execute("SELECT count(*) FROM stage_progress").fetchone()[0] == 0
    finally:
        raw.close()
        await store.close()


async def test_the_last_stage_finishing_completes_the_job_once(store: JobStore) -> None:
    given, kept, replayed, cancelled = (_record(tenant="acme", meta={"kind": "text"}) for _ in range(4))
    for record in (given, kept, replayed, cancelled):
        await store.create(record, submission=b"{}")
    await store.transform(kept.job_id, lambda r: r.model_copy(update={"summary": "from the summarizer"}))
    await store.update_stage(replayed.job_id, "summarizer", StageState.failed, attempts=3, error="bad")
    await store.keep_dead_letter("summarizer", b"{}", job_id=replayed.job_id)
    await store.cancel(cancelled.job_id)

    await store.finish(given.job_id, "notifier", attempts=1, summary="given", meta={"pages": 2})
    await store.finish(kept.job_id, "notifier", attempts=1, summary=None, meta=None)
    await store.finish(replayed.job_id, "notifier", attempts=1, summary="at last", meta=None)
    await store.finish(cancelled.job_id, "notifier", attempts=1, summary="never", meta=None)
    done = await store.get(given.job_id)
    assert done is not None and (done.state, done.summary, done.error) == (JobState.completed, "given", None)
    assert done.meta == {"kind": "text", "pages": 2} and done.stages["notifier"].state == StageState.done
    first_update = done.updated_at
    await store.finish(given.job_id, "notifier", attempts=2, summary="a redelivery", meta={"pages": 9})
    again = await store.get(given.job_id)
    assert again is not None and (again.summary, again.meta["pages"]) == ("given", 2), "completed once"
    assert again.updated_at >= first_update
    assert (await store.get(kept.job_id)).summary == "from the summarizer"  # type: ignore[union-attr]
    revived = await store.get(replayed.job_id)
    assert revived is not None and (revived.state, revived.error) == (JobState.completed, None)
    assert (await store.get(cancelled.job_id)).state == JobState.cancelled  # type: ignore[union-attr]
    assert await store.active_jobs("acme") == 0 and await store.unfinished_submissions() == []
    assert await store.dead_letters() == [], "a completed job's dead letters go"


async def test_a_jobs_blobs_are_listed(store: JobStore) -> None:
    record = _record()
    await store.create(record)
    assert await store.blobs_of(record.job_id) == [] and await store.blobs_of("unknown") == []
    blob = BlobRef(uri="file:///tmp/b", size=3, sha256="1" * 64)
    await store.transform(record.job_id, lambda r: records.with_blob(r, blob))
    assert await store.blobs_of(record.job_id) == [blob]

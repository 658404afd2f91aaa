"""The stage loop's window and commit logic, against in-memory doubles of the consumer and
producer (tests/fakes/kafka.py) and a real SQLite job store. The real-broker behaviour is in
test_delivery.py and test_stage_runtime.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from conveyor.breakers import Breaker, DependencyFailure
from conveyor.errors import PermanentError
from conveyor.events import DeadLetter, Event, Payload
from conveyor.kafka import stage as stage_module
from conveyor.kafka.stage import Stage, StageWorker
from conveyor.settings import Settings
from conveyor.stores.base import JobRecord, StageState
from conveyor.stores.sqlite_store import SqliteJobStore
from fakes.kafka import FakeConsumer, FakeProducer

TOPIC = "conveyor.extract"
NEXT = "conveyor.summarize"
DLQ = "conveyor.extract.dlq"


def settings(**overrides: object) -> Settings:
    defaults = dict(retry_base_seconds=0.01, retry_max_seconds=0.05, commit_interval_seconds=0.02,
                    max_attempts=3, concurrency=8, max_in_flight=64)
    return Settings(**{**defaults, **overrides})  # type: ignore[arg-type]


def event_bytes(job_id: str, **extra: object) -> bytes:
    event = Event(job_id=job_id, user_id="u", stage="extractor", payload=Payload(text="x"))
    return json.dumps({**json.loads(event.to_bytes()), **extra}).encode()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Harness:
    def __init__(self, tmp_path: Path, handler, *, partitions: int = 1, blocked=None,  # type: ignore[no-untyped-def]
                 **overrides: object) -> None:
        self.store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        self.consumer = FakeConsumer(TOPIC, partitions=partitions)
        self.producer = FakeProducer()
        self.settings = settings(**overrides)
        self.worker = StageWorker(Stage("extractor", handler, blocked=blocked), self.settings, self.store,
                                  consumer=self.consumer, producer=self.producer)

    async def add(self, job_id: str, *, partition: int = 0, **extra: object) -> int:
        await self.store.create(JobRecord(job_id=job_id, user_id="u"))
        return self.consumer.append(event_bytes(job_id, **extra), key=job_id.encode(), partition=partition)

    def outputs(self) -> list[str]:
        return [Event.from_bytes(value).job_id for _, value in self.producer.sent.get(NEXT, [])]

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(value) for _, value in self.producer.sent.get(DLQ, [])]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StageWorker]:
        task = asyncio.create_task(self.worker.run())
        try:
            yield self.worker
        finally:
            self.worker.stop()
            await asyncio.wait_for(task, 10)
            await self.store.close()


def gated() -> tuple[dict[str, asyncio.Event], Callable]:
    """A handler that finishes job X when the test sets gates[X]."""
    gates: dict[str, asyncio.Event] = {}

    async def handler(event: Event) -> Event:
        await gates.setdefault(event.job_id, asyncio.Event()).wait()
        return event.next()

    return gates, handler


def open_gate(gates: dict[str, asyncio.Event], job_id: str) -> None:
    gates.setdefault(job_id, asyncio.Event()).set()


async def test_commits_follow_the_contiguous_done_prefix(tmp_path: Path) -> None:
    gates, handler = gated()
    h = Harness(tmp_path, handler)
    for i in range(5):
        await h.add(f"j{i}")
    async with h.running():
        await eventually(lambda: h.worker.in_flight == 5)
        for job in ("j2", "j3"):
            open_gate(gates, job)
        await eventually(lambda: sorted(h.outputs()) == ["j2", "j3"])
        await asyncio.sleep(0.1)
        assert h.consumer.committed_position() in (None, 0), "nothing below j2 is done"
        open_gate(gates, "j0")
        await eventually(lambda: h.consumer.committed_position() == 1)
        open_gate(gates, "j1")
        await eventually(lambda: h.consumer.committed_position() == 4)
        open_gate(gates, "j4")
        await eventually(lambda: h.consumer.committed_position() == 5)
    assert all(b >= a for a, b in zip([c[next(iter(c))] for c in h.consumer.commits][:-1],
                                      [c[next(iter(c))] for c in h.consumer.commits][1:]))


async def test_a_slow_record_holds_back_only_its_own_partitions_commit_point(tmp_path: Path) -> None:
    gates, handler = gated()
    h = Harness(tmp_path, handler, partitions=2)
    await h.add("slow", partition=0)
    for i in range(20):
        await h.add(f"p0-{i}", partition=0)
        await h.add(f"p1-{i}", partition=1)
    async with h.running():
        await eventually(lambda: h.worker.in_flight == 41)
        for i in range(20):
            open_gate(gates, f"p0-{i}")
            open_gate(gates, f"p1-{i}")
        await eventually(lambda: len(h.outputs()) == 40)
        await eventually(lambda: h.consumer.committed_position(1) == 20)
        assert h.consumer.committed_position(0) in (None, 0)
        open_gate(gates, "slow")
        await eventually(lambda: h.consumer.committed_position(0) == 21)


async def test_retries_wait_outside_the_window_and_new_records_keep_flowing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Full jitter can make a backoff nearly 0; here every retry waits its whole ceiling of 1 s.
    monkeypatch.setattr(stage_module, "backoff_delay", lambda attempt, *, base, cap: cap)
    calls: dict[str, int] = {}

    async def handler(event: Event) -> Event:
        calls[event.job_id] = calls.get(event.job_id, 0) + 1
        if event.job_id == "flaky" and calls["flaky"] < 3:
            raise RuntimeError("transient")
        return event.next()

    # One handler slot: if a retry wait held it, nothing else could run meanwhile.
    h = Harness(tmp_path, handler, concurrency=1, retry_base_seconds=1.0, retry_max_seconds=1.0, max_attempts=5)
    await h.add("flaky")
    async with h.running():
        await eventually(lambda: calls.get("flaky") == 1)
        for i in range(10):
            await h.add(f"new-{i}")
        await eventually(lambda: len([j for j in h.outputs() if j.startswith("new-")]) == 10)
        assert calls["flaky"] < 3, "the new records finished while the failed one waited"
        await eventually(lambda: "flaky" in h.outputs())
        await eventually(lambda: h.consumer.committed_position() == 11)
    assert calls["flaky"] == 3
    job = await SqliteJobStore(tmp_path / "jobs.sqlite3").get("flaky")
    assert job and job.stages["extractor"].attempts == 3


async def test_revocation_does_not_wait_for_a_backoff_and_hands_back_what_is_not_done(tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    async def handler(event: Event) -> Event:
        calls[event.job_id] = calls.get(event.job_id, 0) + 1
        if event.job_id == "failing":
            raise RuntimeError("fails")
        return event.next()

    h = Harness(tmp_path, handler, retry_base_seconds=30, retry_max_seconds=30, max_attempts=5)
    await h.add("done-0")
    await h.add("failing")
    await h.add("done-2")
    async with h.running():
        await eventually(lambda: calls.get("failing") == 1 and len(h.outputs()) == 2)
        started = time.monotonic()
        await h.consumer.revoke(0)
        assert time.monotonic() - started < 1.0, "the revocation waited for the 30 s backoff"
        assert h.consumer.committed_position() == 1, "done prefix committed, the failing record handed back"
        assert h.worker.in_flight == 0
        await h.consumer.assign(0)
        await eventually(lambda: calls["failing"] == 2)  # redelivered from the committed position


async def test_a_full_window_pauses_fetching_and_resumes_when_it_drains(tmp_path: Path) -> None:
    gates, handler = gated()
    h = Harness(tmp_path, handler, max_in_flight=4, batch_size=2)
    for i in range(10):
        await h.add(f"j{i}")
    async with h.running():
        await eventually(lambda: h.worker.in_flight == 4)
        await asyncio.sleep(0.1)
        assert h.worker.in_flight == 4 and h.consumer.paused()
        for i in range(10):
            open_gate(gates, f"j{i}")
        await eventually(lambda: len(h.outputs()) == 10)
        await eventually(lambda: not h.consumer.paused())
        await eventually(lambda: h.consumer.committed_position() == 10)


async def test_a_broker_error_after_the_handler_never_runs_it_again(tmp_path: Path) -> None:
    calls: list[str] = []

    async def handler(event: Event) -> Event:
        calls.append(event.job_id)
        return event.next()

    h = Harness(tmp_path, handler)
    h.producer.fail_next(4)
    await h.add("j0")
    async with h.running():
        await eventually(lambda: h.outputs() == ["j0"])
        await eventually(lambda: h.consumer.committed_position() == 1)
    assert calls == ["j0"]
    assert not h.dead_letters()


async def test_attempts_survive_the_worker_a_record_that_killed_it_goes_to_the_dlq(tmp_path: Path) -> None:
    calls: list[str] = []

    async def handler(event: Event) -> Event:
        calls.append(event.job_id)
        return event.next()

    h = Harness(tmp_path, handler, max_attempts=3)
    await h.add("killer")
    await h.add("resumed")
    # As left behind by workers that died inside the handler: attempts started, none finished.
    await h.store.update_stage("killer", "extractor", StageState.running, attempts=3)
    await h.store.update_stage("resumed", "extractor", StageState.running, attempts=1)
    async with h.running():
        await eventually(lambda: len(h.dead_letters()) == 1 and h.outputs() == ["resumed"])
        await eventually(lambda: h.consumer.committed_position() == 2)
    (letter,) = h.dead_letters()
    assert letter.job_id == "killer" and letter.error_type == "WorkerDied"
    assert "worker died while handling" in letter.error and letter.attempts == 3
    assert calls == ["resumed"], "the killer record was not handed to the handler a fourth time"
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    killer, resumed = await store.get("killer"), await store.get("resumed")
    assert killer and killer.stages["extractor"].state == StageState.failed
    assert resumed and resumed.stages["extractor"].attempts == 2


async def test_every_attempt_has_a_deadline(tmp_path: Path) -> None:
    async def handler(event: Event) -> Event:
        if event.job_id == "hangs":
            await asyncio.sleep(3600)
        return event.next()

    h = Harness(tmp_path, handler, stage_timeout_seconds=0.1, max_attempts=2)
    await h.add("hangs")
    await h.add("fine")
    async with h.running():
        await eventually(lambda: len(h.dead_letters()) == 1 and h.outputs() == ["fine"])
    (letter,) = h.dead_letters()
    assert letter.error_type == "DeadlineExceeded" and letter.attempts == 2


async def test_events_from_a_newer_producer_are_read_and_keep_their_fields(tmp_path: Path) -> None:
    async def handler(event: Event) -> Event:
        return event.next()

    h = Harness(tmp_path, handler)
    await h.add("newer", priority="high")  # a field this worker does not know
    await h.add("v2", version=2)
    async with h.running():
        await eventually(lambda: h.outputs() == ["newer"] and len(h.dead_letters()) == 1)
    (_, value), = h.producer.sent[NEXT]
    assert json.loads(value)["priority"] == "high", "passed on downstream"
    (letter,) = h.dead_letters()
    assert "unsupported event version 2" in letter.error


async def test_a_version_of_an_erased_document_is_skipped_and_a_job_without_a_record_still_runs(
        tmp_path: Path) -> None:
    """A replayed dead letter of an erased document's version finds no record: nothing runs for
    it. A job without a document and without a record (a store that lost it) runs as before."""
    handled: list[str] = []

    async def handler(event: Event) -> Event:
        handled.append(event.job_id)
        return event.next()

    h = Harness(tmp_path, handler)
    h.consumer.append(event_bytes("erased", document_id="handbook"), key=b"default/handbook")
    h.consumer.append(event_bytes("unrecorded"), key=b"unrecorded")
    await h.add("kept", document_id="handbook")
    async with h.running():
        await eventually(lambda: sorted(h.outputs()) == ["kept", "unrecorded"])
        await eventually(lambda: h.consumer.committed_position(0) == 3)
    assert sorted(handled) == ["kept", "unrecorded"]


async def test_permanent_errors_go_to_the_dlq_at_once(tmp_path: Path) -> None:
    calls: list[int] = []

    async def handler(event: Event) -> Event:
        calls.append(event.attempt)
        raise PermanentError("bad document")

    h = Harness(tmp_path, handler)
    await h.add("bad")
    async with h.running():
        await eventually(lambda: len(h.dead_letters()) == 1)
    assert calls == [1]


async def test_liveness_fails_only_when_running_work_makes_no_progress(tmp_path: Path) -> None:
    gates, handler = gated()
    h = Harness(tmp_path, handler, liveness_stall_seconds=0.3, stage_timeout_seconds=60)
    async with h.running() as worker:
        await asyncio.sleep(0.5)
        assert worker.alive(), "idle is healthy"
        await h.add("stuck")
        await eventually(lambda: worker.in_flight == 1)
        await eventually(lambda: not worker.alive(), timeout=2)
        open_gate(gates, "stuck")
        await eventually(worker.alive)


@pytest.mark.parametrize("count", [200])
async def test_many_records_across_partitions_all_commit(tmp_path: Path, count: int) -> None:
    async def handler(event: Event) -> Event:
        await asyncio.sleep(0.001 * (hash(event.job_id) % 5))
        return event.next()

    h = Harness(tmp_path, handler, partitions=3, max_in_flight=16, batch_size=8)
    for i in range(count):
        await h.add(f"j{i}", partition=i % 3)
    async with h.running():
        await eventually(lambda: len(h.outputs()) == count, timeout=20)
        await eventually(lambda: sum(h.consumer.committed_position(p) or 0 for p in range(3)) == count)
    assert sorted(h.outputs()) == sorted(f"j{i}" for i in range(count))


class FlakyDependency:
    """A dependency behind a real breaker (opens after 2 failures, probes every 50 ms) that is down
    while `down` is set; counts the calls that reached it."""

    def __init__(self) -> None:
        self.breaker = Breaker("dep", failures=2, probe_seconds=0.05, probe_max_seconds=0.05)
        self.down = True
        self.calls = 0
        self.calls_while_down = 0

    async def handler(self, event: Event) -> Event:
        async with self.breaker.call():
            self.calls += 1
            if self.down:
                self.calls_while_down += 1
                raise DependencyFailure("refused")
        return event.next()


async def test_an_outage_is_waited_out_without_using_attempts_or_reaching_the_dlq(tmp_path: Path) -> None:
    dependency = FlakyDependency()
    harness = Harness(tmp_path, dependency.handler, max_attempts=2)
    for i in range(20):
        await harness.add(f"job-{i}")

    async with harness.running():
        await asyncio.sleep(1.0)  # 20 retry budgets of 2 attempts would be spent many times over
        waiting = await harness.store.get("job-0")
        dependency.down = False
        await eventually(lambda: len(harness.outputs()) == 20)

    assert harness.dead_letters() == []
    assert waiting is not None and waiting.stages["extractor"].state == StageState.waiting
    assert waiting.stages["extractor"].waiting_for == "dep"
    # Probes, not a flood: two failures open the breaker, then about one probe per 50 ms.
    assert dependency.calls_while_down <= 2 + 1.0 / 0.05 + 4
    for i in range(20):
        record = await SqliteJobStore(tmp_path / "jobs.sqlite3").get(f"job-{i}")
        assert record is not None and record.stages["extractor"].attempts == 1


async def test_a_failure_while_the_dependency_serves_others_is_charged_and_dead_lettered(tmp_path: Path) -> None:
    breaker = Breaker("dep", failures=100, probe_seconds=1, probe_max_seconds=1)

    async def handler(event: Event) -> Event:
        async with breaker.call():
            if event.job_id == "poison":
                await asyncio.sleep(0.05)  # the healthy ones succeed meanwhile
                raise DependencyFailure("500 for this input")
        return event.next()

    harness = Harness(tmp_path, handler, max_attempts=2, partitions=2)
    await harness.add("poison", partition=0)
    healthy = 0

    async def keep_the_dependency_busy() -> None:
        nonlocal healthy
        while True:
            await harness.add(f"ok-{healthy}", partition=1)
            healthy += 1
            await asyncio.sleep(0.005)

    async with harness.running():
        feeder = asyncio.create_task(keep_the_dependency_busy())
        try:
            await eventually(lambda: len(harness.dead_letters()) == 1)
        finally:
            feeder.cancel()
        await eventually(lambda: len(harness.outputs()) == healthy)

    assert harness.dead_letters()[0].job_id == "poison"


async def test_a_stage_whose_every_record_needs_a_down_dependency_stops_fetching(tmp_path: Path) -> None:
    handled: list[str] = []
    down = True

    async def handler(event: Event) -> Event:
        handled.append(event.job_id)
        return event.next()

    harness = Harness(tmp_path, handler, blocked=lambda: "dep" if down else None)
    for i in range(5):
        await harness.add(f"job-{i}")
    async with harness.running():
        await asyncio.sleep(0.5)
        assert handled == [] and harness.consumer.paused()
        down = False
        await eventually(lambda: len(harness.outputs()) == 5)

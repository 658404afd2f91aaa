"""A stage's bindings (where it reads, writes, dead-letters and reports failures) and how the stage
loop routes by them, against the in-memory consumer and producer and a real SQLite job store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.errors import PermanentError
from conveyor.events import Event, Payload
from conveyor.kafka.stage import Stage, StageWorker
from conveyor.settings import Settings
from conveyor.stores.base import JobRecord, JobState, StageProgress, StageState
from conveyor.stores.blobs import FileBlobStore
from conveyor.stores.sqlite_store import SqliteJobStore
from conveyor.topics import BindingError, stage_bindings
from fakes.kafka import FakeConsumer, FakeProducer


def test_by_default_each_stage_writes_to_the_next_and_the_last_writes_nothing() -> None:
    settings = Settings(topic_prefix="p")
    extractor = stage_bindings("extractor", settings)
    assert (extractor.input_topic, extractor.output_topic, extractor.next_stage) == ("p.extract", "p.summarize",
                                                                                    "summarizer")
    assert (extractor.dlq_topic, extractor.consumer_group, extractor.notify_topic) == ("p.extract.dlq",
                                                                                      "p-extractor", "p.notify")
    notifier = stage_bindings("notifier", settings)
    assert notifier.last and notifier.next_stage is None and notifier.notify_topic is None


def test_the_pipeline_list_chains_the_stages() -> None:
    settings = Settings(pipeline_stages="extractor,notifier")
    assert stage_bindings("extractor", settings).output_topic == "conveyor.notify"
    embedding = Settings(pipeline_stages="extractor,embedder,summarizer")
    assert stage_bindings("embedder", embedding).output_topic == "conveyor.summarize"
    last = stage_bindings("summarizer", embedding)
    assert last.last and last.notify_topic is None  # no notifier in this pipeline: nobody to tell


def test_explicit_bindings_win() -> None:
    bound = Settings(pipeline_stages="extractor,embedder,notifier", input_topic="team.embed",
                     output_topic="team.out", next_stage="notifier", consumer_group="team-embedders",
                     notify_topic="team.notify")
    embedder = stage_bindings("embedder", bound)
    assert (embedder.input_topic, embedder.dlq_topic, embedder.consumer_group) == ("team.embed", "team.embed.dlq",
                                                                                  "team-embedders")
    assert (embedder.output_topic, embedder.next_stage, embedder.notify_topic) == ("team.out", "notifier",
                                                                                  "team.notify")
    assert stage_bindings("embedder", bound.model_copy(update={"dlq_topic": "team.dead"})).dlq_topic == "team.dead"
    assert stage_bindings("embedder", bound.model_copy(update={"output_topic": ""})).last


def test_bindings_that_contradict_the_pipeline_are_refused_by_name() -> None:
    with pytest.raises(BindingError, match="not in CONVEYOR_PIPELINE_STAGES"):
        stage_bindings("embedder", Settings())
    with pytest.raises(BindingError, match="set CONVEYOR_NEXT_STAGE"):
        stage_bindings("notifier", Settings(output_topic="somewhere"))


def test_a_pipeline_names_each_stage_once() -> None:
    with pytest.raises(ValueError, match="CONVEYOR_PIPELINE_STAGES"):
        Settings(pipeline_stages="extractor,extractor")


# --- the stage loop routes by its bindings ------------------------------------------------------

async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _run_one(tmp_path: Path, stage: str, handler, settings: Settings, *,  # type: ignore[no-untyped-def]
                   record: JobRecord, blobs: FileBlobStore | None = None) -> tuple[FakeProducer, JobRecord]:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.create(record)
    bindings = stage_bindings(stage, settings)
    consumer, producer = FakeConsumer(bindings.input_topic), FakeProducer()
    event = Event(job_id=record.job_id, user_id="u", stage=stage, payload=Payload(text="x"),
                  callback_url="https://example.com/hook")
    consumer.append(event.to_bytes(), key=record.job_id.encode())
    worker = StageWorker(Stage(stage, handler), settings, store, blobs=blobs, consumer=consumer, producer=producer)
    task = asyncio.create_task(worker.run())
    try:
        await _eventually(lambda: consumer.committed_position() == 1)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    stored = await store.get(record.job_id)
    await store.close()
    assert stored is not None
    return producer, stored


def _settings(**overrides: object) -> Settings:
    return Settings(commit_interval_seconds=0.02, retry_base_seconds=0.01, max_attempts=1, **overrides)  # type: ignore[arg-type]


async def test_an_output_goes_to_the_output_binding_addressed_to_the_next_stage(tmp_path: Path) -> None:
    async def handler(event: Event) -> Event:
        return event.next(meta={"seen": True})

    settings = _settings(pipeline_stages="extractor,embedder,notifier", output_topic="team.vectors",
                         next_stage="embedder")
    producer, record = await _run_one(tmp_path, "extractor", handler, settings,
                                      record=JobRecord(job_id="j1", user_id="u"))
    [(_, value)] = producer.sent["team.vectors"]
    assert Event.from_bytes(value).stage == "embedder"
    assert record.stages["extractor"].state == StageState.done and record.state == JobState.running


async def test_the_last_stage_completes_the_job_with_its_output_and_deletes_its_blobs(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    blob = await blobs.put(b"the uploaded document")

    async def handler(event: Event) -> Event:
        return event.next(summary="the summary", meta={"chunks": 3})

    settings = _settings(pipeline_stages="extractor,summarizer")
    record = JobRecord(job_id="j2", user_id="u", blobs=[blob],
                       stages={"extractor": StageProgress(state=StageState.done), "summarizer": StageProgress()})
    producer, stored = await _run_one(tmp_path, "summarizer", handler, settings, record=record, blobs=blobs)
    assert producer.sent == {}  # nothing follows the last stage, and no notifier is told
    assert (stored.state, stored.summary, stored.meta) == (JobState.completed, "the summary", {"chunks": 3})
    assert stored.stages["summarizer"].state == StageState.done
    with pytest.raises(PermanentError, match="is missing"):
        await blobs.get(blob)


async def test_a_failure_is_reported_to_the_notify_binding_only_when_the_pipeline_has_one(tmp_path: Path) -> None:
    async def handler(event: Event) -> Event:
        raise PermanentError("unreadable")

    told, _ = await _run_one(tmp_path / "a", "extractor", handler, _settings(),
                             record=JobRecord(job_id="j3", user_id="u"))
    [(_, notice)] = told.sent["conveyor.notify"]
    assert Event.from_bytes(notice).failure.stage == "extractor"  # type: ignore[union-attr]
    untold, stored = await _run_one(tmp_path / "b", "extractor", handler, _settings(pipeline_stages="extractor,summarizer"),
                                    record=JobRecord(job_id="j4", user_id="u"))
    assert sorted(untold.sent) == ["conveyor.extract.dlq"] and stored.state == JobState.failed

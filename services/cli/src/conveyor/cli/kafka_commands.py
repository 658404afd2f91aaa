"""`conveyor topics`, `conveyor lag` and `conveyor dlq`: inspect and repair the topics."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from conveyor.events import DeadLetter, record_key
from conveyor.kafka.admin import describe_partitions, ensure_topics
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.lag import group_lag
from conveyor.settings import Settings
from conveyor.stores import open_job_store
from conveyor.stores.base import JobStore, StageState
from conveyor.topics import all_topics, consumer_group, input_topic, stage_bindings


async def topics(settings: Settings, *, create: bool) -> int:
    names = all_topics(settings.topic_prefix, settings.pipeline_stages)
    if create:
        created = await ensure_topics(settings, names)
        print(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))
    counts = await describe_partitions(settings, names)
    print(f"{'topic':<32} partitions")
    for name in names:
        print(f"{name:<32} {counts.get(name, 0) or 'missing'}")
    return 0


async def lag(settings: Settings, *, as_json: bool) -> int:
    prefix = settings.topic_prefix
    rows = []
    for stage in settings.pipeline_stages:
        rows += await group_lag(settings, consumer_group(stage, prefix), [input_topic(stage, prefix)])
    if as_json:
        print(json.dumps([{"group": r.group, "topic": r.topic, "partition": r.partition,
                           "committed": r.committed, "log_end": r.log_end, "lag": r.lag} for r in rows]))
        return 0
    print(f"{'group':<24} {'topic':<24} {'part':>4} {'committed':>10} {'log end':>10} {'lag':>8}")
    for r in rows:
        print(f"{r.group:<24} {r.topic:<24} {r.partition:>4} {r.committed:>10} {r.log_end:>10} {r.lag:>8}")
    print(f"total lag: {sum(r.lag for r in rows)}")
    return 0


async def read_dead_letters(settings: Settings, stage: str, *, idle_ms: int = 1500) -> list[DeadLetter]:
    """Every record on the stage's DLQ, read with no consumer group (reading changes nothing)."""
    consumer = make_consumer(settings, stage_bindings(stage, settings).dlq_topic, group_id=None)
    letters: list[DeadLetter] = []
    try:
        await consumer.start()
        while batch := await consumer.getmany(timeout_ms=idle_ms):
            for records in batch.values():
                letters += [DeadLetter.model_validate_json(r.value) for r in records]
    finally:
        await consumer.stop()
    return letters


async def _letters(settings: Settings, stage: str, tenant: str | None) -> list[DeadLetter]:
    """The stage's dead letters, the latest one per job (a replayed job that failed again has two),
    only the tenant's when one is named."""
    letters = [letter for letter in await read_dead_letters(settings, stage)
               if tenant is None or letter.tenant() == tenant]
    latest = {letter.job_id: letter for letter in sorted(letters, key=lambda l: l.failed_at) if letter.job_id}
    return [letter for letter in letters if not letter.job_id or latest[letter.job_id] is letter]


def _job_store(settings: Settings) -> JobStore | None:
    """The job store, or None where its backend's client is not installed (Redis from a bare CLI)."""
    try:
        return open_job_store(settings)
    except ImportError:
        return None


async def _stage_states(settings: Settings, stage: str, letters: list[DeadLetter]) -> dict[str, StageState]:
    """Where each letter's job stands in the stage now (replayed: no longer failed)."""
    store = _job_store(settings)
    if store is None:
        return {}
    try:
        records = [await store.get(letter.job_id) for letter in letters if letter.job_id]
    finally:
        await store.close()
    return {record.job_id: record.stages[stage].state for record in records
            if record is not None and stage in record.stages}


async def dlq_list(settings: Settings, stage: str, *, tenant: str | None = None) -> int:
    letters = await _letters(settings, stage, tenant)
    states = await _stage_states(settings, stage, letters)
    for letter in letters:
        state = states.get(letter.job_id or "")
        replayed = f"  (replayed: {state.value} now)" if state not in (None, StageState.failed) else ""
        print(f"{letter.failed_at:%Y-%m-%d %H:%M:%S}  job={letter.job_id or '-'}  attempts={letter.attempts}  "
              f"{letter.error_type}: {letter.error[:120]}{replayed}")
    print(f"{len(letters)} dead letter(s) on {stage_bindings(stage, settings).dlq_topic}", file=sys.stderr)
    return 0


async def dlq_replay(settings: Settings, stage: str, *, job_ids: set[str] | None, tenant: str | None = None) -> int:
    """Send dead-lettered records back to the stage's input topic, byte for byte, and mark their
    jobs' stage running again; a job already replayed (its stage no longer failed) is skipped."""
    letters = [l for l in await _letters(settings, stage, tenant) if not job_ids or l.job_id in job_ids]
    missing = sorted((job_ids or set()) - {l.job_id for l in letters})
    states = await _stage_states(settings, stage, letters)
    replayed_before = [l for l in letters if states.get(l.job_id or "") not in (None, StageState.failed)]
    letters = [l for l in letters if l not in replayed_before]
    store = _job_store(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = stage_bindings(stage, settings).input_topic
        for letter in letters:
            headers = [(k, v.encode()) for k, v in letter.original_headers]
            original = letter.original()
            await producer.send_and_wait(topic, original, key=record_key(original, letter.job_id), headers=headers)
            if letter.job_id and store:  # its status says it is back in the queue, and a second replay skips it
                await store.update_stage(letter.job_id, stage, StageState.running, attempts=0)
    finally:
        await producer.stop()
        if store:
            await store.close()
    print(f"replayed {len(letters)} record(s) to {topic}")
    if replayed_before:
        print(f"skipped {len(replayed_before)} already replayed: job(s) "
              f"{', '.join(l.job_id or '-' for l in replayed_before[:10])} (see conveyor status)")
    if missing:
        print(f"conveyor: no dead letter for job(s) {', '.join(missing)} on {stage_bindings(stage, settings).dlq_topic}",
              file=sys.stderr)
        return 1
    return 0


def run(coro: Coroutine[Any, Any, int], settings: Settings) -> int:
    """Run a command; a broker that cannot be reached is one line that says what to do."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors: ours says it once
    try:
        return asyncio.run(coro)
    except KafkaError as exc:
        print(f"conveyor: cannot reach the Kafka broker at {settings.bootstrap_servers} ({type(exc).__name__}). "
              "Is `conveyor up` running? Point CONVEYOR_BOOTSTRAP_SERVERS at the broker it printed.", file=sys.stderr)
        return 1

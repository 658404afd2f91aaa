"""`conveyor topics`, `conveyor lag` and `conveyor dlq`: inspect and repair the topics."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from aiokafka.errors import KafkaError

from conveyor.events import DeadLetter
from conveyor.kafka.admin import describe_partitions, ensure_topics
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.lag import group_lag
from conveyor.settings import Settings
from conveyor.topics import STAGES, all_topics, consumer_group, dlq_topic, input_topic


async def topics(settings: Settings, *, create: bool) -> int:
    names = all_topics(settings.topic_prefix)
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
    for stage in STAGES:
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
    consumer = make_consumer(settings, dlq_topic(stage, settings.topic_prefix), group_id=None)
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
    """The stage's dead letters, only the tenant's when one is named."""
    letters = await read_dead_letters(settings, stage)
    return [letter for letter in letters if tenant is None or letter.tenant() == tenant]


async def dlq_list(settings: Settings, stage: str, *, tenant: str | None = None) -> int:
    letters = await _letters(settings, stage, tenant)
    for letter in letters:
        print(f"{letter.failed_at:%Y-%m-%d %H:%M:%S}  job={letter.job_id or '-'}  attempts={letter.attempts}  "
              f"{letter.error_type}: {letter.error[:120]}")
    print(f"{len(letters)} dead letter(s) on {dlq_topic(stage, settings.topic_prefix)}", file=sys.stderr)
    return 0


async def dlq_replay(settings: Settings, stage: str, *, job_ids: set[str] | None, tenant: str | None = None) -> int:
    """Send dead-lettered records back to the stage's input topic, byte for byte."""
    letters = [l for l in await _letters(settings, stage, tenant) if not job_ids or l.job_id in job_ids]
    missing = sorted((job_ids or set()) - {l.job_id for l in letters})
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = input_topic(stage, settings.topic_prefix)
        for letter in letters:
            headers = [(k, v.encode()) for k, v in letter.original_headers]
            key = letter.job_id.encode() if letter.job_id else None
            await producer.send_and_wait(topic, letter.original(), key=key, headers=headers)
    finally:
        await producer.stop()
    print(f"replayed {len(letters)} record(s) to {topic}")
    if missing:
        print(f"conveyor: no dead letter for job(s) {', '.join(missing)} on {dlq_topic(stage, settings.topic_prefix)}",
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

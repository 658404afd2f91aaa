"""Re-driving unfinished jobs from the job store, after the embedded broker lost its events.

The embedded broker keeps everything in memory: when it dies, every event in flight dies with it,
while the job store still holds each unfinished job and its first event (the system of record).
Once the broker is back on its address, the topics are created again and every unfinished job
starts over: its stages are reset and its first event is published again. A stage that had
finished such a job runs it again, since the event it produced was lost too; the stages are
idempotent by job id, so a job whose event did survive somewhere is not done twice over.

Dead letters are kept in the job store as well, and put back on their topics whenever the
embedded broker starts, so that `conveyor dlq list` and `replay` work across restarts.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from conveyor.events import DeadLetter, record_key
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_producer
from conveyor.settings import Settings
from conveyor.stores import open_job_store, records
from conveyor.stores.base import JobStore
from conveyor.pipeline import PipelineSpec


async def restore(settings: Settings, pipeline: PipelineSpec) -> tuple[int, int]:
    """Everything the job store holds back onto an empty embedded broker, the pipeline's topics
    created first: (unfinished jobs re-driven, dead letters put back)."""
    await ensure_topics(settings, pipeline.topics())
    store = open_job_store(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        jobs = await _redrive_unfinished(store, producer, pipeline.input_topic(pipeline.stages[0]))
        return jobs, await _put_back_dead_letters(store, producer, pipeline)
    finally:
        await producer.stop()
        await store.close()


async def _redrive_unfinished(store: JobStore, producer: AIOKafkaProducer, topic: str) -> int:
    """Every unfinished job starts over from its first event, on the first stage's topic."""
    jobs = await store.unfinished_submissions()
    sent = []
    for job_id, event in jobs:
        await store.transform(job_id, records.restarted)
        sent.append(await producer.send(topic, event, key=record_key(event, job_id)))
    await asyncio.gather(*sent)
    return len(jobs)


async def _put_back_dead_letters(store: JobStore, producer: AIOKafkaProducer, pipeline: PipelineSpec) -> int:
    """Each kept dead letter back on its stage's DLQ (a stage no longer in the pipeline keeps its
    letters in the store, where they wait for it)."""
    stages = {stage.name: stage for stage in pipeline.stages}
    letters = [(stages[name], letter) for name, letter in await store.dead_letters() if name in stages]
    sent = []
    for stage, letter in letters:
        job_id = DeadLetter.model_validate_json(letter).job_id
        sent.append(await producer.send(pipeline.dlq_topic(stage), letter,
                                        key=job_id.encode() if job_id else None))
    await asyncio.gather(*sent)
    return len(letters)

"""Re-driving unfinished jobs from the job store, after the embedded broker lost its events.

The embedded broker keeps everything in memory: when it dies, every event in flight dies with it,
while the job store still holds each unfinished job and its first event (the system of record).
Once the broker is back on its address, the topics are created again and every unfinished job
starts over: its stages are reset and its first event is published again. A stage that had
finished such a job runs it again, since the event it produced was lost too; the stages are
idempotent by job id, so a job whose event did survive somewhere is not done twice over.
"""

from __future__ import annotations

import asyncio

from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_producer
from conveyor.settings import Settings
from conveyor.stores import open_job_store, records
from conveyor.topics import all_topics, input_topic


async def redrive_unfinished(settings: Settings) -> int:
    """Create the topics and re-publish every unfinished job's first event; how many were."""
    await ensure_topics(settings, all_topics(settings.topic_prefix))
    store = open_job_store(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        jobs = await store.unfinished_submissions()
        topic = input_topic("extractor", settings.topic_prefix)
        sent = []
        for job_id, event in jobs:
            await store.transform(job_id, records.restarted)
            sent.append(await producer.send(topic, event, key=job_id.encode()))
        await asyncio.gather(*sent)
        return len(jobs)
    finally:
        await producer.stop()
        await store.close()

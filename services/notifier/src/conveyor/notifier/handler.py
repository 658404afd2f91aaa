"""Notifier handler: complete the job, then POST its result to the callback URL; a job that
failed in an earlier stage gets a `job.failed` POST instead (that stage sends the notice).

At least once: the POST comes first and is recorded after it succeeds, so a crash in between
sends it again, with the same `webhook-id` (the job id; `<job id>.failed` for a failure) for the
receiver to de-duplicate on. A POST the host does not take waits on the retry schedule
(`deliveries`), not in the partition.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx

from conveyor import metrics
from conveyor.breakers import Breakers
from conveyor.events import Event
from conveyor.kafka.stage import Stage
from conveyor.notifier.deliveries import Deliveries
from conveyor.settings import Settings
from conveyor.stores import records
from conveyor.stores.base import JobRecord, JobState, JobStore
from conveyor.stores.blobs import BlobStore


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    if settings.webhook_secret is None:
        raise ValueError("CONVEYOR_WEBHOOK_SECRET is not set: the notifier signs every webhook with it")
    client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
    resources.push_async_callback(client.aclose)
    deliveries = Deliveries(settings, store, client, settings.webhook_secret.get_secret_value(),
                            Breakers.from_settings(settings))
    scheduler = asyncio.create_task(deliveries.run(), name="webhook-scheduler")
    resources.push_async_callback(_stop, scheduler, deliveries)

    async def notify(event: Event) -> None:
        record = await store.get(event.job_id)
        if event.failure is not None:  # the job failed in a stage: its callback hears `job.failed`
            if record is not None and record.state == JobState.failed and event.callback_url \
                    and not record.outcome_delivery():
                await deliveries.first_attempt(record, event.callback_url)
            return None
        first_completion = record is None or record.summary is None
        # Nothing reads a job's blobs once its summary is here (the event carries it): they go
        # before the job completes, so a crash in between leaves none behind.
        for blob in record.blobs if record else ():
            await blobs.delete(blob)
        await store.complete(event.job_id, summary=event.summary or "", meta=event.meta)
        if first_completion:
            metrics.JOBS_COMPLETED.inc()
        # A delivery already delivered, or already on the schedule, is not this record's to send.
        if event.callback_url and not (record and (record.notified_at or (
                record.delivery and record.delivery.webhook_id == record.job_id))):
            # What complete() just stored, without reading it back.
            completed = records.completed(record or JobRecord(job_id=event.job_id, tenant=event.tenant,
                                                              user_id=event.user_id),
                                          summary=event.summary or "", meta=event.meta)
            await deliveries.first_attempt(completed, event.callback_url)
        return None

    # A failure notice is sent once and is not the notifier's own stage work: it skips nothing.
    return Stage("notifier", notify, skip_done=True, reports_failures=False, completes_jobs=True)


async def _stop(scheduler: asyncio.Task[None], deliveries: Deliveries) -> None:
    scheduler.cancel()
    await asyncio.gather(scheduler, return_exceptions=True)
    await deliveries.close()

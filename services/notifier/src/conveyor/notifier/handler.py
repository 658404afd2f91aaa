"""Notifier handler: complete the job, then POST its result to the callback URL.

At least once: the POST comes first and is recorded after it succeeds, so a crash in between
sends it again, with the same `webhook-id` (the job id) for the receiver to de-duplicate on.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import httpx

from conveyor import metrics
from conveyor.events import Event
from conveyor.kafka.stage import Stage
from conveyor.notifier.webhooks import check_target, deliver, signer
from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore


def result_body(event: Event) -> bytes:
    return json.dumps({
        "job_id": event.job_id, "user_id": event.user_id, "status": "completed",
        "summary": event.summary, "meta": event.meta,
    }).encode()


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
    resources.push_async_callback(client.aclose)
    webhook = signer(settings.webhook_secret.get_secret_value())

    async def notify(event: Event) -> None:
        record = await store.get(event.job_id)
        first_completion = record is None or record.summary is None
        await store.complete(event.job_id, summary=event.summary or "", meta=event.meta)
        if first_completion:
            metrics.JOBS_COMPLETED.inc()
        if event.callback_url and not (record and record.notified_at):
            await check_target(event.callback_url, allow_private=settings.webhook_allow_private)
            await deliver(client, event.callback_url, result_body(event), webhook=webhook, delivery_id=event.job_id)
            await store.mark_notified(event.job_id)
        return None

    return Stage("notifier", notify, skip_done=True)

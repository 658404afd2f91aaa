"""Sending a job's webhook again, now: one job (`POST /jobs/{id}/redeliver`) or every job of the
tenant that ended in a state since a time (`POST /jobs/redeliver`). The notifiers' schedulers do
the sending, with the outcome's own `webhook-id`, and the retry schedule starts over."""

from __future__ import annotations

import time
from datetime import datetime

from conveyor.events import utcnow
from conveyor.stores.base import Delivery, DeliveryState, JobRecord, JobState, JobStore, delivery_host

ENDED = (JobState.completed, JobState.failed, JobState.cancelled)
MAX_BULK = 10_000  # jobs one bulk request schedules at most; its `next` continues after them
PAGE = 500


def refusal(record: JobRecord) -> str | None:
    """Why this job's webhook cannot be sent again; None when it can."""
    if not record.callback_url:
        return f"job {record.job_id} has no callback_url"
    if record.state not in ENDED:
        return f"job {record.job_id} is {record.state.value}; only an ended job's webhook is re-sent"
    return None


async def schedule(store: JobStore, record: JobRecord) -> Delivery:
    previous = record.outcome_delivery()
    # Slot -1: the schedule starts over after this attempt.
    delivery = Delivery(state=DeliveryState.waiting, webhook_id=record.webhook_id(), slot=-1,
                        attempts=previous.attempts if previous else 0, next_attempt_at=utcnow(),
                        last_status=previous.last_status if previous else None)
    await store.set_delivery(record.job_id, delivery)
    await store.schedule_delivery(record.job_id, host=delivery_host(record.callback_url or ""), due=time.time())
    return delivery


async def schedule_all(store: JobStore, tenant: str, state: JobState, since: datetime,
                       before: str | None = None) -> tuple[int, str | None]:
    """Every job of the tenant in `state` updated since `since` (created before the job at `before`),
    with a callback, newest first, up to MAX_BULK: (scheduled, where to continue or None)."""
    scheduled = 0
    while True:
        page = await store.list_jobs(tenant, state=state, since=since, before=before, limit=PAGE)
        for record in page:
            if refusal(record) is None:
                if scheduled == MAX_BULK:
                    return scheduled, before
                await schedule(store, record)
                scheduled += 1
            before = record.page_key()
        if len(page) < PAGE:
            return scheduled, None

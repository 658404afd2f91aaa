"""What the gateway turns away before accepting work: floods (429), tenants over their active-job
quota (429) and work the pipeline cannot absorb (503), each with Retry-After.

The request rate is limited per tenant and gateway process (a token bucket: `rate` per second,
bursts of twice that); with several replicas the tenant's total is that times the replicas. The
active-job count comes from the job store, re-read at most once a second per tenant, plus the jobs
this process accepted since, so the quota holds across replicas up to what they accept within that
second.
"""

from __future__ import annotations

import math
import time

from fastapi import HTTPException

from conveyor import metrics
from conveyor.stores.base import JobStore

QUOTA_REFRESH_SECONDS = 1.0
QUOTA_RETRY_AFTER_SECONDS = 5


def refuse(status: int, reason: str, detail: str, retry_after: float) -> HTTPException:
    metrics.HTTP_REFUSED.labels(reason).inc()
    return HTTPException(status, detail, headers={"retry-after": str(max(1, math.ceil(retry_after)))})


class TenantRate:
    def __init__(self, per_second: float) -> None:
        self.rate, self.burst = per_second, max(1.0, 2 * per_second)
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str) -> None:
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[tenant] = (tokens, now)
            raise refuse(429, "rate_limited", f"tenant {tenant} is over its rate of {self.rate:g} requests a second",
                         (1 - tokens) / self.rate)
        self._buckets[tenant] = (tokens - 1, now)


class ActiveJobQuota:
    def __init__(self, store: JobStore, limit: int) -> None:
        self.store, self.limit = store, limit
        self._counts: dict[str, tuple[int, float]] = {}  # tenant -> (active jobs, read at)

    async def check(self, tenant: str) -> None:
        count, read_at = self._counts.get(tenant, (0, float("-inf")))
        if time.monotonic() - read_at >= QUOTA_REFRESH_SECONDS:
            count, read_at = await self.store.active_jobs(tenant), time.monotonic()
            self._counts[tenant] = (count, read_at)
        if count >= self.limit:
            raise refuse(429, "quota", f"tenant {tenant} has {count} unfinished jobs, its limit is {self.limit}; "
                                       "submit more as they finish", QUOTA_RETRY_AFTER_SECONDS)

    def accepted(self, tenant: str) -> None:
        count, read_at = self._counts.get(tenant, (0, float("-inf")))
        self._counts[tenant] = (count + 1, read_at)


class BacklogBound:
    """503 while the most backed-up stage has more than `bound` records waiting (as last measured)."""

    def __init__(self, bound: int | None, interval_seconds: float) -> None:
        self.bound, self.interval = bound, interval_seconds
        self.backlog: int | None = None

    def measured(self, backlog: int) -> None:
        self.backlog = backlog
        metrics.PIPELINE_BACKLOG.set(backlog)

    def check(self) -> None:
        if self.bound is not None and self.backlog is not None and self.backlog > self.bound:
            raise refuse(503, "overloaded", f"the pipeline is {self.backlog} records behind (bound {self.bound}); "
                                            "nothing was accepted, try again later", self.interval)

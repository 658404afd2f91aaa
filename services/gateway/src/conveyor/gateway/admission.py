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
from conveyor.pacing import Budget
from conveyor.stores.base import JobStore

QUOTA_REFRESH_SECONDS = 1.0
QUOTA_RETRY_AFTER_SECONDS = 5


def refuse(status: int, reason: str, detail: str, retry_after: float) -> HTTPException:
    metrics.HTTP_REFUSED.labels(reason).inc()
    return HTTPException(status, detail, headers={"retry-after": str(max(1, math.ceil(retry_after)))})


class TenantRate:
    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self._budgets: dict[str, Budget] = {}  # tenant -> its token bucket

    def take(self, tenant: str) -> None:
        budget = self._budgets.get(tenant)
        if budget is None:
            budget = self._budgets[tenant] = Budget(self.rate * 60, burst=2 * self.rate)
        wait = budget.wait_for(1)
        if wait > 0:
            raise refuse(429, "rate_limited", f"tenant {tenant} is over its rate of {self.rate:g} requests a second",
                         wait)
        budget.spend(1)


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

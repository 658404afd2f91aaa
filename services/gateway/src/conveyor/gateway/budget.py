"""Daily token budgets per tenant (CONVEYOR_TENANT_DAILY_TOKENS): once a tenant's jobs have spent
its budget for the UTC day, /submit and /upload answer 429 with Retry-After until the day ends.

What was spent is read from the job store (conveyor.usage), at most once every
BUDGET_REFRESH_SECONDS per tenant and gateway process; work accepted before the budget is spent
runs to its end, so a day can end somewhat over budget.
"""

from __future__ import annotations

import time
from datetime import datetime

from conveyor.events import utcnow
from conveyor.gateway.admission import refuse
from conveyor.stores.base import JobStore
from conveyor.usage import UsageTotal, day_of, next_day

BUDGET_REFRESH_SECONDS = 2.0
EVERY_TENANT = "*"


class DailyTokenBudget:
    def __init__(self, store: JobStore, budgets: dict[str, int]) -> None:
        self.store, self.budgets = store, budgets
        self._spent: dict[tuple[str, str], tuple[UsageTotal, float]] = {}  # (tenant, day) -> (total, read at)

    def limit(self, tenant: str) -> int | None:
        return self.budgets.get(tenant, self.budgets.get(EVERY_TENANT))

    async def spent(self, tenant: str, day: str, *, fresh: bool = False) -> UsageTotal:
        cached = self._spent.get((tenant, day))
        if cached is not None and not fresh and time.monotonic() - cached[1] < BUDGET_REFRESH_SECONDS:
            return cached[0]
        total = await self.store.tenant_usage(tenant, day)
        if len(self._spent) > 10_000:  # yesterday's entries and tenants long gone
            self._spent.clear()
        self._spent[(tenant, day)] = (total, time.monotonic())
        return total

    async def check(self, tenant: str, now: datetime | None = None) -> None:
        limit = self.limit(tenant)
        if limit is None:
            return
        now = now or utcnow()
        total = await self.spent(tenant, day_of(now))
        if total.tokens >= limit:
            resets = next_day(now)
            raise refuse(429, "budget", f"tenant {tenant} has spent its daily budget of {limit} tokens "
                                        f"({total.tokens} today); it resets at {resets.isoformat().replace('+00:00', 'Z')}",
                         (resets - now).total_seconds())

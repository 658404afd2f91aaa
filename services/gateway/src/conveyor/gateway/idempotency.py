"""`Idempotency-Key` on /submit and /upload: a retried request is the same job.

Per tenant and for `CONVEYOR_IDEMPOTENCY_TTL_SECONDS` (24 h), the first request with a key binds
it to its body's digest and a new job id, in the job store (atomically, so concurrent duplicates
agree on one job). A later request with the key and the same body gets the first one's answer;
with another body, a 422 that says so. A duplicate that arrives while the first is still being
accepted waits for it (a few seconds at most); if the first fails before its job is accepted, it
releases the key and a retry starts afresh.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException

from conveyor.ids import new_job_id
from conveyor.stores.base import JobStore

KEY_PATTERN = r"^[!-~]{1,255}$"  # printable ASCII without spaces, as Stripe's and the IETF draft's keys
JOIN_SECONDS = 5.0
JOIN_POLL_SECONDS = 0.02


class Idempotency:
    def __init__(self, store: JobStore, ttl_seconds: float) -> None:
        self.store, self.ttl = store, ttl_seconds

    async def claim(self, tenant: str, key: str, digest: str) -> tuple[str, bool]:
        """The job id for this request, and whether it is new (False: answer with the first one's)."""
        deadline = time.monotonic() + JOIN_SECONDS
        while True:
            job_id = new_job_id()
            held_digest, held_job = await self.store.claim_idempotency_key(
                tenant, key, digest=digest, job_id=job_id, ttl_seconds=self.ttl)
            if held_job == job_id:
                return job_id, True
            if held_digest != digest:
                raise HTTPException(422, "this Idempotency-Key was used with a different request body; "
                                         "use a new key for a new request")
            if await self.store.get(held_job) is not None:
                return held_job, False
            if time.monotonic() > deadline:  # the first request is stuck, or died before releasing the key
                raise HTTPException(409, "a request with this Idempotency-Key is still being accepted; retry",
                                    headers={"retry-after": "1"})
            await asyncio.sleep(JOIN_POLL_SECONDS)

    async def release(self, tenant: str, key: str, job_id: str) -> None:
        await self.store.release_idempotency_key(tenant, key, job_id=job_id)

"""Redis job store: the backend for several gateway replicas and worker pods sharing one status view.

Each job is one hash under `<prefix><job_id>`:

- `record`: the JobRecord as JSON, rewritten by optimistic transactions (WATCH/MULTI/EXEC) so that
  concurrent writers never lose each other's changes; the transitions themselves come from
  `conveyor.stores.records`, shared with the SQLite backend so both agree exactly.
- `notified_at`: the one-time notification claim, taken with HSETNX (SET NX semantics) by a small
  Lua script that also refuses to claim a job that does not exist.

With `ttl_seconds`, every write (re)sets the key's expiry, so a job disappears that long after its
last change, unless something can still re-drive it (a dead letter, a waiting delivery): such a
job has no expiry until it is finished.

An idempotency key is a string `<prefix>idempotency:<tenant>:<sha256 of the key>` holding
`<body digest>:<job id>`, set with NX and the TTL.

Each tenant's unfinished jobs are a sorted set `<prefix>active:<tenant>` (job id by last update),
for the active-job quota; with `ttl_seconds`, members older than that are dropped as their
records expire. Every job is in its tenant's sorted set `<prefix>jobs:<tenant>` (by creation
time), for listing, and a version of a document also in `<prefix>versions:<tenant>/<document>`;
members whose record expired are dropped as a listing meets them. An
unfinished job's first event is a string `<prefix>submission:<job_id>`, deleted when the job
finishes, to re-drive it if the events in flight are lost. Copies of dead letters are a list
`<prefix>dead-letters` of `<stage> <letter>` entries, with a set `<prefix>dead-letters:<job_id>`
of each job's entries, removed when the job completes or is cancelled.

The webhook retry schedule is a sorted set `<prefix>deliveries` (job id by due time) and one per
host, `<prefix>deliveries:<host>`; claims run as Lua scripts, so they are atomic.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from datetime import datetime

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import WatchError

from conveyor.errors import TransientError
from conveyor.events import utcnow
from conveyor.stores.base import JobRecord, JobState, JobStore
from conveyor.usage import UsageTotal

DEFAULT_PREFIX = "conveyor:job:"
MAX_CONNECTIONS = 64
POOL_TIMEOUT_SECONDS = 30
RECORD_FIELD = "record"
NOTIFIED_FIELD = "notified_at"

# KEYS[1] = job key; ARGV[1] = claim timestamp; ARGV[2] = ttl seconds (0 = none).
_CLAIM_NOTIFICATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local claimed = redis.call('HSETNX', KEYS[1], 'notified_at', ARGV[1])
if claimed == 1 and tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return claimed
"""


# KEYS[1] = schedule, KEYS[2] = host schedule or ""; ARGV = now, limit, lease, min score, max score.
_CLAIM_DELIVERIES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2] ~= '' and KEYS[2] or KEYS[1], ARGV[4], ARGV[5], 'LIMIT', 0, ARGV[2])
local leased = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', leased, id)
  if KEYS[2] ~= '' then redis.call('ZADD', KEYS[2], 'XX', leased, id) end
end
return ids
"""


# Usage is kept this long after its last write, whatever the records' TTL: a quarter's invoices.
USAGE_KEEP_SECONDS = 92 * 86_400


class RedisJobStore(JobStore):
    """Job status in Redis; safe for any number of processes and pods.

    `prefix` namespaces the keys (several pipelines can share one Redis); `ttl_seconds` expires a
    job that long after its last write (None keeps jobs until deleted). `client`, when given, must
    decode responses (`decode_responses=True`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_seconds: int | None = None,
        max_transaction_attempts: int = 200,
        client: Redis | None = None,
    ) -> None:
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be a positive number of seconds, or None for no expiry")
        if max_transaction_attempts < 1:
            raise ValueError("max_transaction_attempts must be at least 1")
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.max_transaction_attempts = max_transaction_attempts
        # A worker can have hundreds of records in flight: past MAX_CONNECTIONS they wait for a
        # connection instead of failing with "Too many connections".
        self._redis: Redis = client or Redis(connection_pool=BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT_SECONDS))
        self._claim = self._redis.register_script(_CLAIM_NOTIFICATION)
        self._claim_deliveries = self._redis.register_script(_CLAIM_DELIVERIES)
        self._schedule = f"{prefix}deliveries"
        self._hosts = f"{prefix}delivery-host:"  # job id -> host, to unschedule from the host's set
        self._dead_letters = f"{prefix}dead-letters"

    def key(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}"

    async def create(self, record: JobRecord, *, submission: bytes | None = None) -> None:
        key = self.key(record.job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, RECORD_FIELD, _dump(record))
            if record.notified_at is not None:
                pipe.hsetnx(key, NOTIFIED_FIELD, record.notified_at.isoformat())
            if self.ttl_seconds:
                pipe.expire(key, self.ttl_seconds)
            created = (await pipe.execute())[0]
        if created:
            listed = {record.job_id: record.created_at.timestamp()}
            await self._redis.zadd(self._jobs(record.tenant), listed, nx=True)
            if record.document_id is not None:
                await self._redis.zadd(self._versions(record.tenant, record.document_id), listed, nx=True)
        if created and not record.finished():
            await self._redis.zadd(self._active(record.tenant), {record.job_id: time.time()}, nx=True)
            if submission is not None:  # events are UTF-8 JSON; the client decodes to text
                await self._redis.set(self._submission(record.job_id), submission.decode("utf-8"),
                                      ex=self.ttl_seconds or None, nx=True)

    async def discard(self, job_id: str) -> None:
        record = await self.get(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(job_id), self._submission(job_id))
            if record is not None:
                pipe.zrem(self._active(record.tenant), job_id)
                pipe.zrem(self._jobs(record.tenant), job_id)
                if record.document_id is not None:
                    pipe.zrem(self._versions(record.tenant, record.document_id), job_id)
            await pipe.execute()
        await self._forget_dead_letters(job_id)
        await self.unschedule_delivery(job_id)

    async def list_jobs(self, tenant: str, *, state: JobState | None = None, since: datetime | None = None,
                        before: str | None = None, limit: int = 50, document: str | None = None) -> list[JobRecord]:
        key, found = (self._jobs(tenant) if document is None else self._versions(tenant, document)), []
        newest = "+inf"
        if before is not None:
            newest = f"({datetime.fromisoformat(before.partition('|')[0].replace('Z', '+00:00')).timestamp()}"
        while len(found) < limit:
            job_ids = await self._redis.zrevrangebyscore(key, newest, "-inf", start=0, num=max(limit, 100),
                                                         withscores=True)
            if not job_ids:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id, _ in job_ids:
                    pipe.hgetall(self.key(job_id))
                loaded = await pipe.execute()
            gone = []
            for (job_id, _), fields in zip(job_ids, loaded):
                record = _load(fields)
                if record is None:
                    gone.append(job_id)  # expired
                elif (state is None or record.state == state) and (since is None or record.updated_at >= since):
                    found.append(record)
            if gone:
                await self._redis.zrem(key, *gone)
            newest = f"({job_ids[-1][1]}"
        return found[:limit]

    async def keep_dead_letter(self, stage: str, letter: bytes, *, job_id: str | None) -> None:
        entry = f"{stage} {letter.decode('utf-8')}"  # letters are JSON (the original is base64 inside)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._dead_letters, entry)
            if job_id:
                pipe.sadd(f"{self._dead_letters}:{job_id}", entry)
            await pipe.execute()

    async def dead_letters(self) -> list[tuple[str, bytes]]:
        entries = await self._redis.lrange(self._dead_letters, 0, -1)
        return [(stage, letter.encode("utf-8")) for stage, _, letter in (entry.partition(" ") for entry in entries)]

    async def _forget_dead_letters(self, job_id: str) -> None:
        job_entries = f"{self._dead_letters}:{job_id}"
        for entry in await self._redis.smembers(job_entries):
            await self._redis.lrem(self._dead_letters, 0, entry)
        await self._redis.delete(job_entries)

    async def unfinished_submissions(self) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        async for active in self._redis.scan_iter(match=f"{self._active('*')}", count=500):
            job_ids = await self._redis.zrange(active, 0, -1)
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                events = await self._redis.mget([self._submission(job_id) for job_id in chunk])
                found += [(job_id, event.encode("utf-8")) for job_id, event in zip(chunk, events) if event is not None]
        return found

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._redis.hgetall(self.key(job_id))
        return _load(fields)

    async def mark_notified(self, job_id: str) -> bool:
        """Claim the job's one notification: True for the first caller only, False for unknown jobs."""
        claimed = await self._claim(
            keys=[self.key(job_id)], args=[utcnow().isoformat(), self.ttl_seconds or 0]
        )
        return bool(int(claimed))

    async def schedule_delivery(self, job_id: str, *, host: str, due: float) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._schedule, {job_id: due})
            pipe.zadd(self._host_schedule(host), {job_id: due})
            pipe.sadd(f"{self._schedule}-hosts", host)
            pipe.set(f"{self._hosts}{job_id}", host)
            await pipe.execute()

    async def unschedule_delivery(self, job_id: str) -> None:
        host = await self._redis.get(f"{self._hosts}{job_id}")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._schedule, job_id)
            if host is not None:
                pipe.zrem(self._host_schedule(host), job_id)
            pipe.delete(f"{self._hosts}{job_id}")
            await pipe.execute()

    async def delivery_hosts(self) -> list[str]:
        hosts = sorted(await self._redis.smembers(f"{self._schedule}-hosts"))
        sizes = [await self._redis.zcard(self._host_schedule(host)) for host in hosts]
        empty = [host for host, size in zip(hosts, sizes) if not size]
        if empty:
            await self._redis.srem(f"{self._schedule}-hosts", *empty)
        return [host for host, size in zip(hosts, sizes) if size]

    async def claim_due_deliveries(self, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        return list(await self._claim_deliveries(keys=[self._schedule, ""],
                                                 args=[now, limit, lease_seconds, "-inf", now]))

    async def claim_host_deliveries(self, host: str, now: float, *, limit: int, lease_seconds: float) -> list[str]:
        return list(await self._claim_deliveries(keys=[self._schedule, self._host_schedule(host)],
                                                 args=[now, limit, lease_seconds, "-inf", "+inf"]))

    async def claim_idempotency_key(self, tenant: str, key: str, *, digest: str, job_id: str,
                                    ttl_seconds: float) -> tuple[str, str]:
        name = self._idempotency(tenant, key)
        await self._redis.set(name, f"{digest}:{job_id}", nx=True, px=max(1, int(ttl_seconds * 1000)))
        held = await self._redis.get(name)
        if held is None:  # expired in between: ours now
            return await self.claim_idempotency_key(tenant, key, digest=digest, job_id=job_id, ttl_seconds=ttl_seconds)
        held_digest, _, held_job = held.partition(":")
        return held_digest, held_job

    async def release_idempotency_key(self, tenant: str, key: str, *, job_id: str) -> None:
        name = self._idempotency(tenant, key)
        held = await self._redis.get(name)
        if held is not None and held.partition(":")[2] == job_id:
            await self._redis.delete(name)

    def _idempotency(self, tenant: str, key: str) -> str:
        # Hashed: a key is the client's text, and the Redis key stays bounded and printable.
        return f"{self.prefix}idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def record_usage(self, tenant: str, job_id: str, stage: str, *, day: str, tokens: int, calls: int) -> None:
        day_key, job_key = self._usage(tenant, day), f"{self.prefix}usage-job:{job_id}"
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in (day_key, job_key):
                pipe.hincrby(key, "tokens", tokens)
                pipe.hincrby(key, "calls", calls)
                pipe.expire(key, USAGE_KEEP_SECONDS)
            pipe.sadd(f"{day_key}:jobs", job_id)
            pipe.expire(f"{day_key}:jobs", USAGE_KEEP_SECONDS)
            await pipe.execute()

    async def tenant_usage(self, tenant: str, day: str) -> UsageTotal:
        key = self._usage(tenant, day)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, "tokens", "calls")
            pipe.scard(f"{key}:jobs")
            (tokens, calls), jobs = await pipe.execute()
        return UsageTotal(int(tokens or 0), int(calls or 0), int(jobs))

    async def job_usage(self, job_id: str) -> UsageTotal:
        tokens, calls = await self._redis.hmget(f"{self.prefix}usage-job:{job_id}", "tokens", "calls")
        spent = tokens is not None or calls is not None
        return UsageTotal(int(tokens or 0), int(calls or 0), int(spent))

    def _usage(self, tenant: str, day: str) -> str:
        return f"{self.prefix}usage:{tenant}:{day}"

    async def active_jobs(self, tenant: str) -> int:
        key = self._active(tenant)
        if self.ttl_seconds:  # records that expired unfinished
            await self._redis.zremrangebyscore(key, "-inf", time.time() - self.ttl_seconds)
        return int(await self._redis.zcard(key))

    def _active(self, tenant: str) -> str:
        return f"{self.prefix}active:{tenant}"

    def _jobs(self, tenant: str) -> str:
        return f"{self.prefix}jobs:{tenant}"

    def _versions(self, tenant: str, document_id: str) -> str:
        return f"{self.prefix}versions:{tenant}/{document_id}"

    def _submission(self, job_id: str) -> str:
        return f"{self.prefix}submission:{job_id}"

    def _host_schedule(self, host: str) -> str:
        return f"{self._schedule}:{host}"

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    async def transform(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> bool:
        """Read-modify-write the record under WATCH; retried when another writer got in between.

        Returns False when the job does not exist (nothing is written then).
        """
        key = self.key(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(self.max_transaction_attempts):
                try:
                    await pipe.watch(key)
                    fields = await pipe.hgetall(key)
                    current = _load(fields)
                    if current is None:
                        await pipe.unwatch()
                        return False
                    updated = change(current)
                    if updated is None or updated is current:  # nothing changes (e.g. a redelivery)
                        await pipe.unwatch()
                        return updated is not None
                    pipe.multi()
                    pipe.hset(key, RECORD_FIELD, _dump(updated))
                    if updated.redrivable():
                        pipe.persist(key)
                    elif self.ttl_seconds:
                        pipe.expire(key, self.ttl_seconds)
                    if updated.finished():
                        if not current.finished():
                            pipe.zrem(self._active(updated.tenant), job_id)
                            pipe.delete(self._submission(job_id))
                    elif current.finished() or self.ttl_seconds:  # revived, or its expiry moved
                        pipe.zadd(self._active(updated.tenant), {job_id: time.time()})
                    await pipe.execute()
                    if updated.final() and not current.final():
                        await self._forget_dead_letters(job_id)  # nothing can re-drive it any more
                    return True
                except WatchError:
                    # Another writer changed the job first: read it again. The short, growing,
                    # jittered pause keeps many contenders from colliding in lockstep.
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
                finally:
                    await pipe.reset()
        raise TransientError(
            f"job {job_id}: gave up after {self.max_transaction_attempts} conflicting concurrent updates"
        )


def _dump(record: JobRecord) -> str:
    # The notification claim lives in its own field; the JSON never carries it.
    return record.model_copy(update={"notified_at": None}).model_dump_json()


def _load(fields: dict[str, str]) -> JobRecord | None:
    raw = fields.get(RECORD_FIELD)
    if raw is None:
        return None
    record = JobRecord.model_validate_json(raw)
    notified = fields.get(NOTIFIED_FIELD)
    if notified:
        record = record.model_copy(update={"notified_at": datetime.fromisoformat(notified)})
    return record

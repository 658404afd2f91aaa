"""Webhook deliveries that wait out their host: a durable retry schedule and a breaker per host.

The notifier's handler makes the first POST. When the host does not take it (connection refused,
timeout, 5xx, 429), the delivery goes on the job store's schedule and the record is done: the
partition moves on, and other hosts' deliveries keep flowing. A scheduler in every notifier claims
due deliveries (leased, so replicas do not share one) and POSTs them again with the same
`webhook-id`. While a host's breaker is open its deliveries are not sent at their slots: one of
them probes the host at the breaker's pace and, once the host answers, every delivery waiting for
it is released at once. A delivery fails when its schedule is exhausted, or at once when the
receiver refuses it with a 4xx; the job keeps its summary, and the delivery can be sent again
(`POST /jobs/{id}/redeliver`, `conveyor redeliver`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from conveyor.breakers import Breaker, Breakers, DependencyFailure, DependencyUnavailable
from conveyor.errors import PermanentError, TransientError
from conveyor.notifier.webhooks import Refused, check_target, deliver, result_body, signers
from conveyor.settings import Settings
from conveyor.stores.base import Delivery, DeliveryState, JobRecord, JobState, JobStore, delivery_host

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # a claimed delivery is someone else's to take only after this
POLL_SECONDS = 0.5
BATCH = 64


class Deliveries:
    """Sends webhooks and owns the ones that wait."""

    def __init__(self, settings: Settings, store: JobStore, client: httpx.AsyncClient, master_secret: str,
                 breakers: Breakers) -> None:
        self._settings = settings
        self._schedule = settings.webhook_retry_schedule
        self._store = store
        self._client = client
        self._master_secret = master_secret
        self._signers: dict[str, list[Webhook]] = {}  # tenant -> its signers
        self._breakers = breakers
        self._sending: set[str] = set()  # job ids this process is sending now
        self._slots = asyncio.Semaphore(settings.concurrency)
        # A host back from an outage gets its backlog at this many connections, not all at once.
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._down_hosts: set[str] = set()  # hosts with deliveries waiting while their breaker is open
        self._suspect_hosts: set[str] = set()  # hosts with deliveries waiting when this process started
        self._probes: dict[str, str] = {}  # job id -> the suspect host its delivery probes
        self._tasks: set[asyncio.Task[None]] = set()

    def _tenant_signers(self, tenant: str) -> list[Webhook]:
        if tenant not in self._signers:
            self._signers[tenant] = signers(self._master_secret, tenant)
        return self._signers[tenant]

    def breaker(self, host: str) -> Breaker:
        return self._breakers[f"webhook {host}"]

    async def first_attempt(self, record: JobRecord, url: str) -> None:
        """The handler's POST; what the host does not take goes on the schedule."""
        await self._attempt(record, url)

    async def run(self) -> None:
        """Claim and send due deliveries until cancelled; probe and release hosts as their breakers allow.
        At start, each host with deliveries waiting is suspect: one of them probes it first, and the
        rest follow at once if it answers, or wait behind its breaker, opened, if it does not."""
        try:
            self._suspect_hosts.update(await self._store.delivery_hosts())
        except Exception as exc:  # noqa: BLE001 - their slots still come due
            log.warning("webhook scheduler: cannot list waiting hosts: %s", exc)
        while True:
            try:
                await self._round()
            except Exception as exc:  # noqa: BLE001 - the job store blipped; the next round tries again
                log.warning("webhook scheduler: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(POLL_SECONDS)

    async def _round(self) -> None:
        now = time.time()
        claimed = await self._store.claim_due_deliveries(now, limit=BATCH, lease_seconds=LEASE_SECONDS)
        for host in list(self._suspect_hosts - set(self._probes.values())):
            probe = await self._store.claim_host_deliveries(host, now, limit=1, lease_seconds=LEASE_SECONDS)
            if not probe:
                self._suspect_hosts.discard(host)
            self._probes.update(dict.fromkeys(probe, host))
            claimed += probe
        for host in list(self._down_hosts):
            breaker = self.breaker(host)
            if not breaker.is_open:  # the host is back: release everything that waited for it
                self._down_hosts.discard(host)
                claimed += await self._store.claim_host_deliveries(host, now, limit=10_000, lease_seconds=LEASE_SECONDS)
            elif breaker.usable():  # time for a probe: one delivery tries the host
                claimed += await self._store.claim_host_deliveries(host, now, limit=1, lease_seconds=LEASE_SECONDS)
        for job_id in dict.fromkeys(claimed):
            if job_id not in self._sending:
                self._spawn(job_id)

    def _spawn(self, job_id: str) -> None:
        self._sending.add(job_id)
        task = asyncio.create_task(self._resend(job_id))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, job_id))

    def _finished(self, task: asyncio.Task[None], job_id: str) -> None:
        self._tasks.discard(task)
        self._sending.discard(job_id)
        # Settled, or it never reached its host (the delivery was done meanwhile): a suspect host
        # left unsettled gets another probe next round.
        self._probes.pop(job_id, None)

    async def _resend(self, job_id: str) -> None:
        async with self._slots:
            record = await self._store.get(job_id)
            if record is None or not record.callback_url or record.delivery is None \
                    or record.delivery.state != DeliveryState.waiting:
                await self._store.unschedule_delivery(job_id)  # delivered, failed or gone meanwhile
                return
            await self._attempt(record, record.callback_url, probe=job_id in self._probes)

    async def _attempt(self, record: JobRecord, url: str, *, probe: bool = False) -> None:
        host = delivery_host(url)
        delivered = False
        try:
            delivered = await self._post(record, url, host)
        finally:
            if probe:  # a suspect host's first probe settles it
                self._suspect_hosts.discard(host)
                if not delivered:
                    self.breaker(host).trip("it was down before this notifier started, and still is")
                self._down_hosts.add(host)  # open: probes follow; closed: the rest is released

    async def _post(self, record: JobRecord, url: str, host: str) -> bool:
        """One POST through the host's breaker; True when delivered."""
        status = None
        host_slots = self._host_slots.setdefault(host, asyncio.Semaphore(self._settings.webhook_host_concurrency))
        try:
            # The breaker first: while it is open, nothing waits for a connection slot.
            async with self.breaker(host).call(), host_slots:
                try:
                    address = await check_target(url, allow_private=self._settings.webhook_allow_private)
                    await deliver(self._client, url, result_body(record), webhooks=self._tenant_signers(record.tenant),
                                  delivery_id=record.webhook_id(), address=address,
                                  max_response_bytes=self._settings.webhook_max_response_bytes,
                                  timeout=self._settings.webhook_timeout_seconds)
                except TransientError as exc:
                    status = getattr(exc, "status", None)
                    raise DependencyFailure(str(exc)) from exc
        except DependencyUnavailable as exc:
            # No cause: the open breaker refused it, and no request was made.
            await self._retry_later(record, host, called=exc.__cause__ is not None, error=str(exc), status=status)
            return False
        except Refused as exc:
            await self._give_up(record, error=str(exc), status=exc.status, called=True)
            return True  # the host answered: it is up
        except PermanentError as exc:  # the URL itself is not allowed
            await self._give_up(record, error=str(exc), status=None, called=False)
            return True
        current = record.outcome_delivery()
        if record.state == JobState.completed:  # the completion's claim; other notices leave room for it
            await self._store.mark_notified(record.job_id)
        else:  # recorded, so that a redelivered notice is not sent twice
            current = current or Delivery(state=DeliveryState.delivered, webhook_id=record.webhook_id())
        if current is not None:
            await self._store.set_delivery(record.job_id, current.model_copy(update={
                "state": DeliveryState.delivered, "attempts": current.attempts + 1, "next_attempt_at": None,
                "last_status": 200, "last_error": None, "updated_at": _now()}))
            await self._store.unschedule_delivery(record.job_id)
            log.info("webhook %s delivered after %d attempt(s)", record.webhook_id(), current.attempts + 1)
        return True

    async def _retry_later(self, record: JobRecord, host: str, *, called: bool, error: str,
                           status: int | None = None) -> None:
        """The next slot of the schedule, or failed when none is left."""
        current = record.outcome_delivery() or Delivery(state=DeliveryState.waiting, webhook_id=record.webhook_id(),
                                                        slot=-1)
        slot = current.slot + 1
        attempts = current.attempts + (1 if called else 0)
        if slot >= len(self._schedule):
            await self._give_up(record, error=error, status=status if called else current.last_status,
                                called=called)
            return
        due = time.time() + self._schedule[slot]
        delivery = current.model_copy(update={
            "state": DeliveryState.waiting, "slot": slot, "attempts": attempts,
            "last_status": status if called else current.last_status, "last_error": error[:500],
            "next_attempt_at": datetime.fromtimestamp(due, timezone.utc), "updated_at": _now()})
        await self._store.set_delivery(record.job_id, delivery)
        await self._store.schedule_delivery(record.job_id, host=host, due=due)
        if self.breaker(host).is_open:
            self._down_hosts.add(host)
        log.debug("webhook for job %s waits for %s (retry %d in %gs)", record.job_id, host, slot + 1, self._schedule[slot])

    async def _give_up(self, record: JobRecord, *, error: str, status: int | None, called: bool) -> None:
        current = record.outcome_delivery() or Delivery(state=DeliveryState.failed, webhook_id=record.webhook_id())
        await self._store.set_delivery(record.job_id, current.model_copy(update={
            "state": DeliveryState.failed, "attempts": current.attempts + (1 if called else 0), "last_status": status,
            "last_error": error[:500], "next_attempt_at": None, "updated_at": _now()}))
        await self._store.unschedule_delivery(record.job_id)
        log.warning("webhook for job %s failed: %s", record.job_id, error[:200])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


def _now() -> datetime:
    return datetime.now(timezone.utc)

"""Circuit breakers, one per dependency: an LLM endpoint, a webhook host, a store.

A breaker opens after `failures` consecutive failures of its dependency. While it is open, calls
are refused without reaching the dependency, and one probe at a time is let through at growing
intervals (`probe_seconds`, doubling, up to `probe_max_seconds`). The probe's success closes the
breaker and releases everything that waited for it at once. Each transition is one log line.

A refused or failed call raises `DependencyUnavailable`: the record is not at fault, so the stage
runtime waits for the dependency instead of charging the record an attempt. The exception is a
failure while the dependency kept serving other calls: that one points at the record (an input
that makes the provider answer 500) and is charged, so such a record still reaches the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from conveyor import metrics
from conveyor.changes import Changes
from conveyor.events import utcnow
from conveyor.settings import Settings

log = logging.getLogger(__name__)

# A waiter woken to probe has this long to make its call before another waiter is woken instead.
PROBE_CLAIM_SECONDS = 10.0


class DependencyFailure(Exception):
    """Raised inside `Breaker.call()`: the dependency failed (refused, timed out, 5xx), not the input."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DependencyUnavailable(Exception):
    """A dependency refused or failed a call. `charge` is True when it served other calls
    meanwhile (the record is suspect); otherwise the record waits, uncharged, until `wait()`
    says a call may be tried again."""

    def __init__(self, dependency: str, message: str, *, wait: Callable[[], Awaitable[None]],
                 since: datetime | None = None, retry_after: float | None = None,
                 charge: bool = False) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.wait = wait
        self.since = since
        self.retry_after = retry_after
        self.charge = charge


class Breaker:
    """The circuit breaker of one dependency, shared by every record of the process."""

    def __init__(self, name: str, *, failures: int, probe_seconds: float, probe_max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failures = failures
        self.probe_seconds = probe_seconds
        self.probe_max_seconds = probe_max_seconds
        self._clock = clock
        self._consecutive = 0
        self._successes = 0
        self._opened_at: float | None = None
        self.opened_since: datetime | None = None  # wall time, for status
        self._interval = probe_seconds
        self._next_probe = 0.0
        self._probing = False
        self._probe_claimed_until = 0.0
        self._changes = Changes()
        self._gauge = metrics.CIRCUIT_OPEN.labels(name)
        self._gauge.set(0)

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def usable(self) -> bool:
        """A call would be admitted now: closed, or open with a probe due and none in flight."""
        return not self.is_open or (not self._probing and self._clock() >= self._next_probe)

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Guard one call. The body raises DependencyFailure when the dependency failed; any other
        exception says nothing about its health."""
        self._admit()
        successes_before = self._successes
        try:
            yield
        except DependencyFailure as exc:
            self._failure(exc)
            raise self.unavailable(str(exc), retry_after=exc.retry_after,
                                   charge=not self.is_open and self._successes > successes_before) from exc
        except BaseException:
            self._neutral()
            raise
        self._success()

    def unavailable(self, message: str, *, retry_after: float | None = None, charge: bool = False) -> DependencyUnavailable:
        return DependencyUnavailable(self.name, message, wait=self.wait_usable, since=self.opened_since,
                                     retry_after=retry_after, charge=charge)

    async def wait_usable(self) -> None:
        """Return once a call may be tried: the breaker closed, or this waiter is the one that probes."""
        while self.is_open:
            now = self._clock()
            if not self._probing and now >= self._next_probe and now >= self._probe_claimed_until:
                self._probe_claimed_until = now + PROBE_CLAIM_SECONDS
                return
            wake_at = max(self._next_probe, self._probe_claimed_until)
            await self._changes.wait(None if self._probing else max(0.01, wake_at - now))

    def trip(self, reason: str) -> None:
        """Open now, without waiting for the failure threshold (the dependency is known to be down)."""
        if not self.is_open:
            self._open(reason)
            self._changes.notify()

    # ------------------------------------------------------------------------- transitions

    def _admit(self) -> None:
        if not self.is_open:
            return
        if self._probing or self._clock() < self._next_probe:
            raise self.unavailable(f"{self.name} is unavailable: its circuit is open (probing every "
                                   f"{self._interval:g}s)")
        self._probing = True
        self._probe_claimed_until = 0.0

    def _failure(self, exc: Exception) -> None:
        now, probe = self._clock(), self._probing
        self._probing = False
        self._consecutive += 1
        if probe:
            self._interval = min(self._interval * 2, self.probe_max_seconds)
            self._next_probe = now + self._interval
            log.info("%s still unavailable (%s); next probe in %gs", self.name, exc, self._interval)
        elif not self.is_open and self._consecutive >= self.failures:
            self._open(f"{self._consecutive} consecutive failures, the last: {exc}")
        self._changes.notify()

    def _open(self, why: str) -> None:
        now = self._clock()
        self._opened_at, self.opened_since = now, utcnow()
        self._interval = self.probe_seconds
        self._next_probe = now + self._interval
        self._gauge.set(1)
        log.warning("%s unavailable (%s); circuit open, calls wait or are refused until a probe gets through",
                    self.name, why)

    def _success(self) -> None:
        self._successes += 1
        self._consecutive = 0
        self._probing = False
        if self._opened_at is not None:
            log.warning("%s is back after %.0fs; circuit closed", self.name,
                        self._clock() - self._opened_at)
            self._opened_at = self.opened_since = None
            self._interval = self.probe_seconds
            self._gauge.set(0)
            self._changes.notify()

    def _neutral(self) -> None:
        if self._probing:
            self._probing = False
            self._changes.notify()



class Breakers:
    """The process's breakers by dependency name, made on first use with the same settings."""

    def __init__(self, *, failures: int, probe_seconds: float, probe_max_seconds: float) -> None:
        self._options = {"failures": failures, "probe_seconds": probe_seconds, "probe_max_seconds": probe_max_seconds}
        self._breakers: dict[str, Breaker] = {}

    def __getitem__(self, name: str) -> Breaker:
        if name not in self._breakers:
            self._breakers[name] = Breaker(name, **self._options)  # type: ignore[arg-type]
        return self._breakers[name]

    @classmethod
    def from_settings(cls, settings: Settings) -> Breakers:
        return cls(failures=settings.circuit_failures, probe_seconds=settings.circuit_probe_seconds,
                   probe_max_seconds=settings.circuit_probe_max_seconds)

    def open(self) -> list[Breaker]:
        return [breaker for breaker in self._breakers.values() if breaker.is_open]


async def first_usable(breakers: list[Breaker]) -> None:
    """Wait until any of `breakers` admits a call."""
    waits = [asyncio.ensure_future(b.wait_usable()) for b in breakers]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()

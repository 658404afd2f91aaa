"""The pace of calls to one endpoint, shared by every record of the process.

A provider's budget is learned, not hammered. Calls in flight are capped by a limit that starts at
the configured concurrency and grows back by one after a run of successes. A 429 for a call made
at k calls in flight lowers it to k - 1 (what the provider was serving) when the recent calls made
at k or more in flight were mostly refused too (at least MIN_EVIDENCE refusals, over two thirds
of those calls): that is a concurrency budget. Calls still being served count as served: a
refusal comes back at once and a success takes seconds, so judged by the answers alone, or by a
few of them, a provider that refuses 30% of calls at random looked like a budget (the limit fell
from 8 to about 2 in that storm and stayed near it). 429s scattered among successes (a busy shared
provider) leave the limit alone; each such record just waits its Retry-After. When most calls are
refused even one at a time, the budget is in time, and the whole endpoint waits for the
Retry-After, not only the record that got it. Optional requests- and tokens-per-minute budgets
are token buckets in front of that.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from conveyor import metrics
from conveyor.changes import Changes

# Successes per unit of limit before the limit grows by one: slow growth keeps 429s rare once
# the provider's capacity is found (about one per GROWTH_PATIENCE * limit calls).
GROWTH_PATIENCE = 4
# Recent outcomes, by how many calls were in flight when each started, that a 429 is judged against.
OUTCOME_WINDOW = 64
# A level is a budget's edge when at least this many calls made at it or above were refused, and
# over two thirds of those calls (answered, or still being served): a provider refusing 30% of
# calls at random gives that less than once in a thousand judgments; a budget, every time.
MIN_EVIDENCE = 8


class Budget:
    """A per-minute budget (requests or tokens) as a token bucket holding at most `burst`."""

    def __init__(self, per_minute: float, *, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be spent (0: now). A call bigger than the bucket waits for a
        full bucket, then spends it all."""
        self._refill()
        needed = min(amount, self.burst)
        return 0.0 if self._tokens >= needed else (needed - self._tokens) / self.rate

    def spend(self, amount: float) -> None:
        self._refill()
        self._tokens -= min(amount, self.burst)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


class Pace:
    """Admission to one endpoint: adaptive concurrency, Retry-After holds and per-minute budgets."""

    def __init__(self, name: str, *, max_concurrency: int, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency
        self._clock = clock
        self._in_flight = 0
        self._successes = 0
        self._hold_until = 0.0
        self._requests = Budget(requests_per_minute, burst=max_concurrency, clock=clock) if requests_per_minute else None
        self._tokens = Budget(tokens_per_minute, burst=tokens_per_minute / 6, clock=clock) if tokens_per_minute else None
        self._outcomes: deque[tuple[int, bool]] = deque(maxlen=OUTCOME_WINDOW)  # (level, refused)
        self._serving: Counter[int] = Counter()  # levels of the calls in flight
        self._changes = Changes()
        self._gauge = metrics.LLM_CONCURRENCY_LIMIT.labels(name)
        self._gauge.set(self.limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def slot(self, *, tokens: float = 0) -> AsyncIterator[int]:
        """Hold one call's place; waits while the endpoint is at its limit, held, or over budget.
        Yields the call's level: the calls in flight when it started, itself included."""
        while (delay := self._delay(tokens)) != 0:
            await self._changes.wait(delay)
        self._in_flight += 1
        level = self._in_flight
        self._serving[level] += 1
        if self._requests:
            self._requests.spend(1)
        if self._tokens and tokens:
            self._tokens.spend(tokens)
        try:
            yield level
        finally:
            self._in_flight -= 1
            self._serving[level] -= 1
            if not self._serving[level]:
                del self._serving[level]
            self._changes.notify()

    def rate_limited(self, retry_after: float | None, *, level: int) -> None:
        """A 429 arrived for a call made at `level` calls in flight."""
        metrics.LLM_RATE_LIMITED.inc()
        self._outcomes.append((level, True))
        if not self._mostly_refused_from(level):
            return  # the provider serves this many at once: this 429 is not about concurrency
        if level <= 1:
            # Refused even one at a time: the budget is in time. The whole endpoint waits.
            self._hold_until = max(self._hold_until, self._clock() + (retry_after or 1.0))
        self.limit = max(1, min(self.limit, level - 1))
        self._successes = 0
        self._gauge.set(self.limit)

    def _mostly_refused_from(self, level: int) -> bool:
        """Calls made at `level` or more in flight were mostly refused: of those answered, and
        those still being served (but the refused call itself, which is still in its slot)."""
        outcomes = [refused for started_at, refused in self._outcomes if started_at >= level]
        serving = sum(count for started_at, count in self._serving.items() if started_at >= level)
        if self._serving.get(level):
            serving -= 1
        refused = sum(outcomes)
        return refused >= MIN_EVIDENCE and refused * 3 > (len(outcomes) + serving) * 2

    def succeeded(self, *, level: int) -> None:
        self._outcomes.append((level, False))
        self._successes += 1
        if self.limit < self.max_concurrency and self._successes >= GROWTH_PATIENCE * self.limit:
            self.limit += 1
            self._successes = 0
            self._gauge.set(self.limit)
            self._changes.notify()

    def _delay(self, tokens: float) -> float | None:
        """0 when a call may start now; else seconds to wait (None: until something changes)."""
        now = self._clock()
        if now < self._hold_until:
            return self._hold_until - now
        if self._in_flight >= self.limit:
            return None
        waits = [budget.wait_for(amount) for budget, amount in ((self._requests, 1), (self._tokens, tokens))
                 if budget is not None and amount]
        return max(waits, default=0.0)

"""The circuit breaker and the endpoint pace, on a clock the tests move by hand."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from conveyor.breakers import Breaker, DependencyFailure, DependencyUnavailable
from conveyor.pacing import GROWTH_PATIENCE, MIN_EVIDENCE, Pace


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fail(breaker: Breaker) -> DependencyUnavailable:
    with pytest.raises(DependencyUnavailable) as raised:
        async with breaker.call():
            raise DependencyFailure("down")
    return raised.value


async def succeed(breaker: Breaker) -> None:
    async with breaker.call():
        pass


async def test_the_breaker_opens_after_its_threshold_and_refuses_without_calling() -> None:
    clock = Clock()
    breaker = Breaker("dep-a", failures=3, probe_seconds=1, probe_max_seconds=8, clock=clock)
    for _ in range(2):
        assert not (await fail(breaker)).charge
    assert not breaker.is_open
    await fail(breaker)
    assert breaker.is_open and breaker.opened_since is not None and not breaker.usable()

    calls = 0
    with pytest.raises(DependencyUnavailable, match="circuit is open"):
        async with breaker.call():
            calls += 1
    assert calls == 0


async def test_probes_come_one_at_a_time_at_doubling_intervals_up_to_the_cap() -> None:
    clock = Clock()
    breaker = Breaker("dep-b", failures=1, probe_seconds=1, probe_max_seconds=4, clock=clock)
    await fail(breaker)
    intervals = []
    for _ in range(5):
        waited = 0.0
        while not breaker.usable():
            clock.now += 0.25
            waited += 0.25
        intervals.append(waited)
        with pytest.raises(DependencyUnavailable):
            async with breaker.call():  # the probe; a second call meanwhile is refused
                with pytest.raises(DependencyUnavailable, match="circuit is open"):
                    async with breaker.call():
                        pass
                raise DependencyFailure("still down")
        assert breaker.is_open
    assert intervals == [1, 2, 4, 4, 4]


async def test_a_successful_probe_closes_the_breaker_and_releases_every_waiter() -> None:
    clock = Clock()
    breaker = Breaker("dep-c", failures=1, probe_seconds=1, probe_max_seconds=1, clock=clock)
    await fail(breaker)
    waiters = [asyncio.create_task(breaker.wait_usable()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)

    clock.now += 1  # the probe is due: exactly one waiter is woken to make it (they sleep 1 s real time)
    await asyncio.sleep(1.2)
    assert sum(w.done() for w in waiters) == 1
    await succeed(breaker)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not breaker.is_open


async def test_a_failure_while_others_succeed_is_charged() -> None:
    breaker = Breaker("dep-d", failures=10, probe_seconds=1, probe_max_seconds=1)
    release = asyncio.Event()

    async def slow_failure() -> DependencyUnavailable:
        with pytest.raises(DependencyUnavailable) as raised:
            async with breaker.call():
                await release.wait()
                raise DependencyFailure("500 for this input")
        return raised.value

    pending = asyncio.create_task(slow_failure())
    await asyncio.sleep(0)
    await succeed(breaker)
    release.set()
    assert (await pending).charge


def test_a_429_lowers_the_limit_to_what_the_provider_was_serving_and_successes_grow_it_back() -> None:
    pace = Pace("llm-a", max_concurrency=8)
    for level in (1, 2, 3, 4):
        pace.succeeded(level=level)
    for _ in range(MIN_EVIDENCE - 1):
        pace.rate_limited(1.0, level=6)  # refused at 6 in flight, nothing served at 6 or more
    assert pace.limit == 8, "too few calls at 6 or more to tell a budget from bad luck"
    pace.rate_limited(1.0, level=6)
    assert pace.limit == 5
    pace.rate_limited(1.0, level=5)
    assert pace.limit == 4
    pace._successes = 0
    for _ in range(GROWTH_PATIENCE * 4 - 1):
        pace.succeeded(level=4)
    assert pace.limit == 4
    pace.succeeded(level=4)
    assert pace.limit == 5


def test_429s_scattered_among_successes_at_the_same_level_leave_the_limit_alone() -> None:
    """A busy shared provider refuses some calls at random: that is not a concurrency budget."""
    pace = Pace("llm-d", max_concurrency=8)
    for _ in range(10):
        for level in range(1, 9):
            pace.succeeded(level=level)
        pace.rate_limited(1.0, level=8)
        pace.rate_limited(1.0, level=3)
    assert pace.limit == 8 and pace._delay(0) == 0


async def _callers(pace: Pace, refuses: Callable[[int], bool], *, callers: int = 40, calls: int = 12) -> int:
    """Callers going through the pace to a provider that answers a refusal (429) at once and a
    success after 20 ms; the lowest limit seen."""
    lowest = pace.limit

    async def caller() -> None:
        nonlocal lowest
        for _ in range(calls):
            async with pace.slot() as level:
                if refuses(level):
                    pace.rate_limited(1.0, level=level)
                else:
                    await asyncio.sleep(0.02)
                    pace.succeeded(level=level)
            lowest = min(lowest, pace.limit)
            await asyncio.sleep(0)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return lowest


async def test_random_429s_answered_at_once_do_not_read_as_a_concurrency_budget() -> None:
    """A refusal comes back at once while a success takes its time: judged only against the
    calls answered so far, the first answers at any level are mostly refusals. The calls still
    being served at that level count as served."""
    rng = random.Random(7)
    pace = Pace("llm-e", max_concurrency=8)
    assert await _callers(pace, lambda level: rng.random() < 0.3) >= 7


async def test_a_provider_serving_four_at_once_is_found_with_calls_in_flight() -> None:
    pace = Pace("llm-f", max_concurrency=8)
    await _callers(pace, lambda level: level > 4)
    assert pace.limit <= 5, "the limit comes down to what the provider serves (growing back by one now and then)"


async def test_a_provider_refusing_even_one_call_at_a_time_holds_the_whole_endpoint_for_its_retry_after() -> None:
    clock = Clock()
    pace = Pace("llm-b", max_concurrency=1, clock=clock)
    for _ in range(MIN_EVIDENCE):
        async with pace.slot() as level:
            pace.rate_limited(retry_after=30.0, level=level)
    assert pace._delay(0) == pytest.approx(30.0)
    clock.now += 30
    assert pace._delay(0) == 0


def test_a_requests_per_minute_budget_spaces_calls_out() -> None:
    clock = Clock()
    pace = Pace("llm-c", max_concurrency=2, requests_per_minute=60, clock=clock)
    pace._requests.spend(1)  # type: ignore[union-attr]
    pace._requests.spend(1)  # type: ignore[union-attr]
    assert pace._delay(0) == pytest.approx(1.0)  # one request a second once the burst is spent
    clock.now += 1
    assert pace._delay(0) == 0


async def test_trip_opens_a_breaker_known_to_be_down_at_once() -> None:
    breaker = Breaker("dep-e", failures=16, probe_seconds=1, probe_max_seconds=30)
    breaker.trip("down before this process started")
    assert breaker.is_open and not breaker.usable()

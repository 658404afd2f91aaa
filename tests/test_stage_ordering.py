"""The stage loop runs records of one job one after another, and everything else concurrently."""

from __future__ import annotations

import asyncio

from conveyor.kafka.key_locks import KeyLocks


async def peak_overlap(locks: KeyLocks, keys: list[bytes | None]) -> int:
    running = peak = 0

    async def hold(key: bytes | None) -> None:
        nonlocal running, peak
        async with locks.hold(key):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(hold(k) for k in keys))
    return peak


async def test_same_job_is_serialized_other_records_are_not() -> None:
    locks = KeyLocks()

    assert await peak_overlap(locks, [b"job-1"] * 3) == 1
    assert await peak_overlap(locks, [b"job-1", b"job-2", b"job-3"]) == 3
    assert await peak_overlap(locks, [None, None, None]) == 3
    assert len(locks) == 0  # nothing left behind


async def test_a_record_cancelled_while_it_waits_for_its_key_leaves_nothing_behind() -> None:
    locks = KeyLocks()
    first_in = asyncio.Event()

    async def first() -> None:
        async with locks.hold(b"job-1"):
            first_in.set()
            await asyncio.sleep(0.05)

    async def second() -> None:
        async with locks.hold(b"job-1"):
            raise AssertionError("cancelled before its turn")

    holder = asyncio.create_task(first())
    await first_in.wait()
    waiter = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await holder
    assert len(locks) == 0
    assert await peak_overlap(locks, [b"job-1"] * 2) == 1, "the key still serializes afterwards"

"""The stage loop runs records of one job one after another, and everything else concurrently."""

from __future__ import annotations

import asyncio

from conveyor.kafka.stage import Stage, StageWorker
from conveyor.settings import Settings


async def _noop(event):  # type: ignore[no-untyped-def]
    return None


async def peak_overlap(worker: StageWorker, keys: list[bytes | None]) -> int:
    running = peak = 0

    async def hold(key: bytes | None) -> None:
        nonlocal running, peak
        async with worker._one_at_a_time(key):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(hold(k) for k in keys))
    return peak


async def test_same_job_is_serialized_other_records_are_not() -> None:
    worker = StageWorker(Stage("extractor", _noop), Settings(), store=None)  # type: ignore[arg-type]

    assert await peak_overlap(worker, [b"job-1"] * 3) == 1
    assert await peak_overlap(worker, [b"job-1", b"job-2", b"job-3"]) == 3
    assert await peak_overlap(worker, [None, None, None]) == 3
    assert worker._job_locks == {}  # nothing left behind

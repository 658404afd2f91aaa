"""Job ids (conveyor.ids): UUIDv7 layout, time first, random after."""

from __future__ import annotations

import time
import uuid

from conveyor.ids import new_job_id


def test_a_job_id_is_32_hex_digits_of_a_version_7_uuid() -> None:
    job_id = new_job_id()
    parsed = uuid.UUID(job_id)
    assert len(job_id) == 32 and job_id == parsed.hex
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs(int(job_id[:12], 16) / 1000 - time.time()) < 5  # the leading 48 bits: Unix milliseconds


def test_ids_sort_in_the_order_they_were_made_across_milliseconds() -> None:
    made = []
    for _ in range(20):
        made.append(new_job_id())
        time.sleep(0.002)
    assert made == sorted(made)


def test_ids_made_in_the_same_millisecond_differ() -> None:
    assert len({new_job_id() for _ in range(100_000)}) == 100_000

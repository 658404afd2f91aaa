"""Building dead-letter records, and reading them back for `conveyor dlq`."""

from __future__ import annotations

import base64

from aiokafka.structs import ConsumerRecord

from conveyor.events import DeadLetter


def dead_letter_for(record: ConsumerRecord, *, stage: str, job_id: str | None, error: BaseException, attempts: int) -> DeadLetter:
    return DeadLetter(
        stage=stage,
        job_id=job_id,
        error_type=type(error).__name__,
        error=str(error)[:4000] or type(error).__name__,
        attempts=attempts,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        original_b64=base64.b64encode(record.value or b"").decode("ascii"),
        original_headers=[(k, v.decode("utf-8", "replace")) for k, v in (record.headers or ())],
    )

"""Exact consumer-group lag: log end offset minus committed offset, per partition.

The log end comes from the high watermark a fetch response carries, not from ListOffsets: the
embedded broker answers ListOffsets "latest" wrongly, while the fetch high watermark is exact there
and on Kafka/Redpanda alike. A group-less consumer fetches once from the committed position of
each partition, so the group itself is never joined or disturbed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from conveyor.kafka.clients import make_consumer
from conveyor.kafka.admin import make_admin
from conveyor.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    log_end: int

    @property
    def lag(self) -> int:
        return max(0, self.log_end - self.committed)


async def _committed(admin: AIOKafkaAdminClient, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    # Partitions are passed explicitly: the embedded broker drops the connection without them.
    offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    return {tp: (meta.offset if meta is not None and meta.offset >= 0 else 0) for tp, meta in offsets.items()}


async def _log_ends(settings: Settings, positions: dict[TopicPartition, int], timeout: float) -> dict[TopicPartition, int]:
    consumer = make_consumer(settings, group_id=None, max_partition_fetch_bytes=1024, fetch_max_bytes=65_536)
    await consumer.start()
    try:
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        deadline = asyncio.get_running_loop().time() + timeout
        while any(consumer.highwater(tp) is None for tp in positions):
            if asyncio.get_running_loop().time() > deadline:
                missing = [f"{tp.topic}[{tp.partition}]" for tp in positions if consumer.highwater(tp) is None]
                raise TimeoutError(f"no high watermark for {', '.join(missing)}")
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp: consumer.highwater(tp) for tp in positions}
    finally:
        await consumer.stop()


async def group_lag(settings: Settings, group: str, topics: list[str], *, timeout: float = 10.0) -> list[PartitionLag]:
    """Exact lag of `group` on every partition of `topics` (missing topics are left out)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        # Describe only topics that exist: the embedded broker creates a topic it is asked about.
        existing = set(await admin.list_topics())
        topics = [t for t in topics if t in existing]
        if not topics:
            return []
        described = await admin.describe_topics(topics)
        partitions = [
            TopicPartition(d["topic"], p["partition"])
            for d in described if not d.get("error_code")
            for p in d.get("partitions") or []
        ]
        if not partitions:
            return []
        committed = await _committed(admin, group, partitions)
    finally:
        await admin.close()
    log_ends = await _log_ends(settings, committed, timeout)
    return sorted(
        (PartitionLag(group, tp.topic, tp.partition, committed[tp], log_ends[tp]) for tp in partitions),
        key=lambda p: (p.topic, p.partition),
    )

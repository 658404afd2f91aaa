"""In-memory doubles of the aiokafka consumer and producer, for the stage loop's unit tests.

They implement what `StageWorker` uses, with the semantics that matter for delivery: per-partition
logs and fetch positions, pause/resume, commits, and rebalances that call the listener and move
the fetch position back to the committed offset, as a new owner of the partition would start.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata


class FakeConsumer:
    def __init__(self, topic: str, *, partitions: int = 1) -> None:
        self.topic = topic
        self.logs: dict[TopicPartition, list[ConsumerRecord]] = {
            TopicPartition(topic, p): [] for p in range(partitions)}
        self.positions = {tp: 0 for tp in self.logs}
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._listener: Any = None
        self.pause_calls = 0

    # --- what the test does
    def append(self, value: bytes, *, key: bytes | None = None, partition: int = 0) -> int:
        tp = TopicPartition(self.topic, partition)
        offset = len(self.logs[tp])
        self.logs[tp].append(ConsumerRecord(self.topic, partition, offset, 0, 0, key, value, None,
                                            len(key or b""), len(value), []))
        return offset

    def committed_position(self, partition: int = 0) -> int | None:
        return self.committed_offsets.get(TopicPartition(self.topic, partition))

    async def revoke(self, *partitions: int) -> None:
        tps = {TopicPartition(self.topic, p) for p in partitions}
        await self._listener.on_partitions_revoked(tps)
        self._assigned -= tps
        self._paused -= tps

    async def assign(self, *partitions: int) -> None:
        tps = {TopicPartition(self.topic, p) for p in partitions}
        for tp in tps:
            self.positions[tp] = self.committed_offsets.get(tp, 0)
        self._assigned |= tps
        await self._listener.on_partitions_assigned(tps)

    # --- the aiokafka surface
    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics == [self.topic]
        self._listener = listener

    async def start(self) -> None:
        await self.assign(*(tp.partition for tp in self.logs))

    async def stop(self) -> None:
        self._assigned = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self.pause_calls += 1
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        budget = max_records
        for tp in sorted(self._assigned - self._paused):
            records = self.logs[tp][self.positions[tp]:self.positions[tp] + budget]
            if records:
                out[tp] = records
                self.positions[tp] += len(records)
                budget -= len(records)
            if budget <= 0:
                break
        if not out:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})
        for tp, meta in offsets.items():
            assert meta.offset >= self.committed_offsets.get(tp, 0), "commits never go backwards"
            self.committed_offsets[tp] = meta.offset


class FakeProducer:
    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.failures_left = 0

    def fail_next(self, count: int) -> None:
        """The next `count` sends fail as a broker that cannot be reached would."""
        self.failures_left = count

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes | None = None,
                            headers: Any = None) -> None:
        await asyncio.sleep(0)
        if self.failures_left:
            self.failures_left -= 1
            raise KafkaConnectionError("broker unreachable (injected)")
        self.sent.setdefault(topic, []).append((key, value))

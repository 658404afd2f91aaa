"""Producing records many callers hand over at once, one batch per partition.

aiokafka's `send` spends about 55 µs of CPU per record with a few dozen in flight: a future, an
accumulator entry and a metadata check for each. `send_batch` pays those once per batch
(about 18 µs a record in batches of 32, on this machine). A busy gateway accepts several jobs in
one turn of the event loop (3.6 on average at 32 connections in bench/ingest.py), each waiting for
its own acknowledgement; `GroupedSender` gathers the records handed to it in that turn and sends
them as one batch per partition, and each caller still returns only once the broker acknowledged
its record (as with `send_and_wait`). A record whose caller stopped waiting before it was handed to
the producer is not sent at all.

Records are placed as `send` would place them: aiokafka's default partitioner (murmur2 of the key
over the topic's partitions), so a record lands on the same partition whichever path sent it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

Headers = list[tuple[str, bytes]]  # a list: the batch builder takes no other sequence


@dataclass
class _Record:
    topic: str
    value: bytes
    key: bytes
    headers: Headers
    acked: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupedSender:
    def __init__(self, producer: AIOKafkaProducer, *, max_record_bytes: int) -> None:
        # Only the default partitioner is reproduced here; make_producer never sets another.
        self.producer = producer
        # A batch takes its first record whatever its size: records past the producer's request
        # limit go through `send`, which refuses them (`max_request_size`, the same figure).
        self.max_record_bytes = max_record_bytes
        self._partitioner = DefaultPartitioner()
        self._waiting: list[_Record] = []
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, topic: str, value: bytes, *, key: bytes, headers: Headers | None = None) -> None:
        """Send one record; returns once the broker acknowledged it (raises what the producer raised)."""
        record = _Record(topic, value, key, headers or [])
        self._waiting.append(record)
        if self._flusher is None or self._flusher.done():
            # A task starts on the loop's next turn: what the other callers hand over meanwhile joins it.
            self._flusher = asyncio.create_task(self._flush())
        await record.acked

    async def _flush(self) -> None:
        while self._waiting:
            records, self._waiting = self._waiting, []
            by_topic: dict[str, list[_Record]] = defaultdict(list)
            for record in records:
                by_topic[record.topic].append(record)
            by_partition: dict[tuple[str, int], list[_Record]] = defaultdict(list)
            for topic, group in by_topic.items():
                try:  # once a group: a topic whose metadata does not come fails its records together
                    every, available = await self._partitions(topic)
                except Exception as exc:  # noqa: BLE001 - the callers' error (e.g. no metadata in time)
                    _fail(group, exc)
                    continue
                for record in group:
                    by_partition[(topic, self._partitioner(record.key, every, available))].append(record)
            try:
                for (topic, partition), group in by_partition.items():
                    await self._send_partition(topic, partition, group)
            except Exception as exc:  # noqa: BLE001 - handed to the callers: none waits for ever
                _fail(records, exc)

    async def _partitions(self, topic: str) -> tuple[list[int], list[int]]:
        await self.producer.partitions_for(topic)  # waits for the topic's metadata, as send does
        cluster = self.producer.client.cluster
        return sorted(cluster.partitions_for_topic(topic)), list(cluster.available_partitions_for_topic(topic))

    async def _send_partition(self, topic: str, partition: int, records: list[_Record]) -> None:
        batch, in_batch = self.producer.create_batch(), []
        for record in records:
            if record.acked.done():  # its caller stopped waiting (a timeout) before it was handed over: not sent
                continue
            if _size(record) > self.max_record_bytes:
                await self._send_alone(record, partition)
                continue
            if not self._append(batch, record):  # full (a batch always takes its first record)
                await self._submit(batch, topic, partition, in_batch)
                batch, in_batch = self.producer.create_batch(), []
                self._append(batch, record)
            in_batch.append(record)
        if in_batch:
            await self._submit(batch, topic, partition, in_batch)

    @staticmethod
    def _append(batch: Any, record: _Record) -> bool:
        return batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is not None

    async def _submit(self, batch: Any, topic: str, partition: int, records: list[_Record]) -> None:
        await _hand_over(records, self.producer.send_batch(batch, topic, partition=partition))

    async def _send_alone(self, record: _Record, partition: int) -> None:
        await _hand_over([record], self.producer.send(record.topic, record.value, key=record.key,
                                                      partition=partition, headers=record.headers))


async def _hand_over(records: list[_Record], handing: Awaitable[asyncio.Future[Any]]) -> None:
    """Give records to the producer; they settle when the broker answers for them."""
    try:
        delivered = await handing
    except Exception as exc:  # noqa: BLE001 - every record handed over with it failed
        _fail(records, exc)
        return
    delivered.add_done_callback(lambda done: _settle(records, done))

def _size(record: _Record) -> int:
    return len(record.value) + len(record.key) + sum(len(name) + len(value) for name, value in record.headers)


def _settle(records: list[_Record], delivered: asyncio.Future[object]) -> None:
    if delivered.cancelled():
        for record in records:
            record.acked.cancel()
    elif delivered.exception() is not None:
        _fail(records, delivered.exception())
    else:
        for record in records:
            if not record.acked.done():  # its caller may have stopped waiting (a timeout)
                record.acked.set_result(None)


def _fail(records: list[_Record], exc: BaseException) -> None:
    for record in records:
        if not record.acked.done():
            record.acked.set_exception(exc)

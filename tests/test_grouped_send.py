"""GroupedSender (conveyor.kafka.grouped_send): records handed over together go out in batches,
each lands where the producer's own `send` would put it, and every caller hears its outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from aiokafka.errors import KafkaError

from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.grouped_send import GroupedSender
from conveyor.settings import Settings


async def _read_all(settings: Settings, topic: str, count: int) -> list:  # type: ignore[type-arg]
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    try:
        records: list = []  # type: ignore[type-arg]
        async with asyncio.timeout(30):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def test_records_land_on_the_partition_send_chooses_and_each_caller_returns_once_acked(broker: str) -> None:
    settings = Settings(bootstrap_servers=broker)
    grouped_topic, plain_topic = f"grouped-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [grouped_topic, plain_topic], partitions=4)
    producer = make_producer(settings)
    await producer.start()
    try:
        sender = GroupedSender(producer, max_record_bytes=settings.max_message_bytes)
        keys = [f"tenant/doc-{i}".encode() for i in range(200)]
        # All handed over in one turn of the loop, with headers, as the gateway does under load.
        await asyncio.gather(*(sender.send(grouped_topic, b"v-" + key, key=key, headers=[("n", str(i).encode())])
                               for i, key in enumerate(keys)))
        await asyncio.gather(*[await producer.send(plain_topic, b"v-" + key, key=key) for key in keys])
    finally:
        await producer.stop()
    grouped = await _read_all(settings, grouped_topic, len(keys))
    plain = await _read_all(settings, plain_topic, len(keys))
    assert {r.key: r.partition for r in grouped} == {r.key: r.partition for r in plain}
    assert len({r.partition for r in grouped}) == 4  # the keys spread: the check above means something
    assert Counter(r.key for r in grouped) == Counter(keys)  # each exactly once
    assert all(r.value == b"v-" + r.key for r in grouped)
    assert {r.key: dict(r.headers)["n"] for r in grouped} == {key: str(i).encode() for i, key in enumerate(keys)}


async def test_a_record_past_the_request_limit_fails_alone_with_the_producers_error(broker: str) -> None:
    settings = Settings(bootstrap_servers=broker)
    topic = f"grouped-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic], partitions=1)
    producer = make_producer(settings, max_request_size=65_536)
    await producer.start()
    try:
        sender = GroupedSender(producer, max_record_bytes=65_536)
        small = [sender.send(topic, b"x" * 100, key=f"k{i}".encode()) for i in range(20)]
        outcomes = await asyncio.gather(sender.send(topic, b"x" * 200_000, key=b"huge"), *small,
                                        return_exceptions=True)
    finally:
        await producer.stop()
    assert isinstance(outcomes[0], KafkaError)
    assert outcomes[1:] == [None] * 20
    assert len(await _read_all(settings, topic, 20)) == 20



async def test_a_record_whose_caller_gave_up_before_it_was_handed_over_is_not_sent(broker: str) -> None:
    settings = Settings(bootstrap_servers=broker)
    topic = f"grouped-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic], partitions=1)
    producer = make_producer(settings)
    await producer.start()
    try:
        sender = GroupedSender(producer, max_record_bytes=settings.max_message_bytes)
        abandoned = asyncio.create_task(sender.send(topic, b"abandoned", key=b"a"))
        await asyncio.sleep(0)  # it is waiting in the group; the group has not gone out yet
        abandoned.cancel()
        await sender.send(topic, b"kept", key=b"k")
    finally:
        await producer.stop()
    assert abandoned.cancelled()
    # Both would be on the one partition, the abandoned one first.
    assert [r.value for r in await _read_all(settings, topic, 1)] == [b"kept"]

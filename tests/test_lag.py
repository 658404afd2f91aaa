"""`conveyor lag` is exact: produced minus committed, per partition, on the real broker."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.kafka.lag import group_lag
from conveyor.settings import Settings


async def test_lag_is_produced_minus_committed_per_partition(broker: str) -> None:
    settings = Settings(bootstrap_servers=broker)
    topic, group = f"lag-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    await ensure_topics(settings, [topic], partitions=3)
    produced = {0: 17, 1: 5, 2: 0}
    producer = make_producer(settings)
    await producer.start()
    for partition, count in produced.items():
        for i in range(count):
            await producer.send(topic, f"m{i}".encode(), partition=partition)
    await producer.flush()
    await producer.stop()

    assert {p.partition: p.lag for p in await group_lag(settings, group, [topic])} == produced

    committed = {0: 11, 1: 5}
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in produced])
    await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in committed.items()})
    await consumer.stop()

    lags = await group_lag(settings, group, [topic])
    assert {p.partition: p.lag for p in lags} == {0: 6, 1: 0, 2: 0}
    assert {p.partition: p.log_end for p in lags} == produced

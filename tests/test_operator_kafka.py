"""The operator's Kafka side (external mode) against a real broker: the suite's embedded Tansu.

Topics are created with the requested partitions and never recreated; lag is exact (produced minus
committed, per partition); and the whole operator, run against kmock with this broker, reports that
lag in the Pipeline's status. Every test uses its own topic prefix on the shared broker.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition

from conveyor.kafka.admin import make_admin
from conveyor.kafka.clients import make_consumer, make_producer
from conveyor.operator.kafka_admin import KafkaAdmin, TopicRequest
from conveyor.pipeline import KafkaSpec
from conveyor.settings import Settings
from test_operator_kmock import (  # noqa: F401  (cluster: a fixture)
    DEPLOYMENTS, Cluster, cluster, eventually, pipeline, running_operator)

pytestmark = pytest.mark.timeout(60)


def kafka_spec(broker: str) -> KafkaSpec:
    return KafkaSpec(bootstrap_servers=broker, topic_prefix=f"op{uuid.uuid4().hex[:10]}")


async def partition_counts(broker: str, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics that exist (listed first: describing a missing one creates it)."""
    admin = make_admin(Settings(bootstrap_servers=broker))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        described = await admin.describe_topics([n for n in names if n in existing]) if existing & set(names) else []
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


async def produce(broker: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = make_producer(Settings(bootstrap_servers=broker))
    await producer.start()
    try:
        for partition, count in per_partition.items():
            for i in range(count):
                await producer.send_and_wait(topic, f"record {i}".encode(), partition=partition)
    finally:
        await producer.stop()


async def commit(broker: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for `group` as one of its consumers does after processing."""
    consumer = make_consumer(Settings(bootstrap_servers=broker), group_id=group)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        await consumer.commit({TopicPartition(topic, p): offset for p, offset in offsets.items()})
    finally:
        await consumer.stop()


@pytest.fixture
def admin() -> KafkaAdmin:
    return KafkaAdmin(Settings(), timeout=15)


async def test_topics_get_the_requested_partitions_and_a_rerun_creates_nothing(broker: str, admin: KafkaAdmin) -> None:
    kafka = kafka_spec(broker)
    wanted = [TopicRequest(f"{kafka.topic_prefix}.extract", 3), TopicRequest(f"{kafka.topic_prefix}.extract.dlq", 3),
              TopicRequest(f"{kafka.topic_prefix}.embedder", 5)]
    first = await admin.ensure_topics(kafka, wanted)
    assert sorted(first.created) == sorted(t.name for t in wanted)
    assert first.problems == [] and first.grown == {}
    assert await partition_counts(broker, [t.name for t in wanted]) == {t.name: t.partitions for t in wanted}

    again = await admin.ensure_topics(kafka, wanted)
    assert (again.created, again.grown, again.problems) == ([], {}, [])
    assert again.partitions == {t.name: t.partitions for t in wanted}


async def test_partitions_never_shrink_and_a_refused_growth_is_reported(broker: str, admin: KafkaAdmin) -> None:
    kafka = kafka_spec(broker)
    topic = f"{kafka.topic_prefix}.summarize"
    await admin.ensure_topics(kafka, [TopicRequest(topic, 3)])

    shrink = await admin.ensure_topics(kafka, [TopicRequest(topic, 2)])
    assert [p.reason for p in shrink.problems] == ["PartitionDecreaseRefused"]
    assert f"topic {topic} has 3 partitions and the spec asks for 2" in shrink.problems[0].message

    # The embedded broker does not implement CreatePartitions (Redpanda and Kafka do).
    grow = await admin.ensure_topics(kafka, [TopicRequest(topic, 6)])
    assert [p.reason for p in grow.problems] == ["PartitionGrowthRefused"]
    assert f"the broker refused to grow topic {topic} from 3 to 6 partitions" in grow.problems[0].message
    assert grow.grown == {} and grow.partitions == {topic: 3}
    assert await partition_counts(broker, [topic]) == {topic: 3}


async def test_lag_is_produced_minus_committed_per_partition(broker: str, admin: KafkaAdmin) -> None:
    kafka = kafka_spec(broker)
    topic, group, idle_group = f"{kafka.topic_prefix}.extract", f"{kafka.topic_prefix}-extractor", "nobody"
    missing = f"{kafka.topic_prefix}.missing"
    await admin.ensure_topics(kafka, [TopicRequest(topic, 3)])
    produced = {0: 5, 1: 7, 2: 4}
    committed = {0: 2, 1: 7, 2: 0}
    await produce(broker, topic, produced)
    await commit(broker, group, topic, committed)

    lag = await admin.lag(kafka, {group: topic, f"{kafka.topic_prefix}-{idle_group}": missing})
    assert lag == {group: {p: produced[p] - committed[p] for p in produced}}
    assert sum(lag[group].values()) == 16 - 9
    assert await partition_counts(broker, [missing]) == {}, "reading lag must not create a missing topic"

    never_committed = await admin.lag(kafka, {f"{kafka.topic_prefix}-fresh": topic})
    assert never_committed == {f"{kafka.topic_prefix}-fresh": produced}


async def test_operator_creates_topics_and_reports_exact_lag_in_status(broker: str, cluster: Cluster) -> None:
    prefix = f"op{uuid.uuid4().hex[:10]}"
    stages = [{"name": "extractor", "image": "conveyor:0.1.0", "partitions": 2},
              {"name": "embedder", "image": "embedder:0.1.0", "command": ["embed"], "partitions": 3}]
    async with running_operator(cluster, KafkaAdmin(Settings(), timeout=15)) as operator:
        await operator.apply(pipeline(mode="external", bootstrap=broker, prefix=prefix, stages=stages))
        names = [f"{prefix}.extract", f"{prefix}.extract.dlq", f"{prefix}.embedder", f"{prefix}.embedder.dlq"]
        for deployment in ("docs-extractor", "docs-embedder"):  # KEDA scales the idle stages to zero
            await eventually(lambda: operator.get(DEPLOYMENTS, deployment), f"the {deployment} Deployment")
            await operator.scale(deployment, 0)
        await eventually(lambda: operator.pipeline("docs").get("status", {}).get("phase") == "Ready",
                         "the pipeline to be ready", timeout=15)
        assert await partition_counts(broker, names) == dict(zip(names, [2, 2, 3, 3]))

        await produce(broker, f"{prefix}.embedder", {0: 6, 1: 1, 2: 3})
        await commit(broker, f"{prefix}-embedder", f"{prefix}.embedder", {0: 4, 1: 1})
        await produce(broker, f"{prefix}.extract", {1: 2})

        def lag_reported() -> dict | None:
            status = operator.pipeline("docs")["status"]
            return status if status.get("totalLag") == 7 else None
        status = await eventually(lag_reported, "the lag in the status", timeout=15)
        assert {s["name"]: (s["lag"], s["partitions"]) for s in status["stages"]} == {
            "extractor": (2, 2), "embedder": ((6 - 4) + (1 - 1) + 3, 3)}

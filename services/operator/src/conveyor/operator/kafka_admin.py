"""Kafka-protocol work of the operator: topics in external mode, exact consumer lag in both modes.

Existence is checked with a full metadata listing, never by describing a named topic: describing an
unknown topic auto-creates it on brokers that allow auto-creation (the embedded broker does, with 4
partitions), which would defeat the partition count the spec asks for.

Lag is exact on Kafka, Redpanda and the embedded broker alike: log end = the high watermark a fetch
response carries (a group-less consumer positioned at the committed offset fetches once), minus the
committed offset. ListOffsets is not used, since the embedded broker answers it wrongly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError

from conveyor.kafka.admin import make_admin
from conveyor.kafka.lag import group_lag
from conveyor.pipeline import KafkaSpec
from conveyor.operator.status import Problem
from conveyor.settings import Settings

TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicRequest:
    name: str
    partitions: int


@dataclass
class TopicReport:
    """What ensure_topics did: topics created, grown, their partition counts now, and what it refused."""

    created: list[str] = field(default_factory=list)
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    described = await admin.describe_topics(names)
    return {d["topic"]: len(d.get("partitions") or []) for d in described if not d.get("error_code")}


class KafkaAdmin:
    """Talks to the brokers a Pipeline names, with the operator's own security settings."""

    def __init__(self, base: Settings, *, timeout: float = 10.0) -> None:
        self._base = base
        self._timeout = timeout

    def settings_for(self, kafka: KafkaSpec) -> Settings:
        return self._base.model_copy(update={"bootstrap_servers": kafka.bootstrap_servers,
                                             "topic_prefix": kafka.topic_prefix})

    async def ensure_topics(self, kafka: KafkaSpec, topics: Iterable[TopicRequest]) -> TopicReport:
        """Create missing topics, grow ones with fewer partitions than asked; never shrink or recreate."""
        async with asyncio.timeout(self._timeout):
            return await self._ensure_topics(kafka, list(topics))

    async def _ensure_topics(self, kafka: KafkaSpec, topics: list[TopicRequest]) -> TopicReport:
        report = TopicReport()
        admin = make_admin(self.settings_for(kafka))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t.name not in existing]
            report.partitions = await _partition_counts(admin, [t.name for t in topics if t.name in existing])
            if missing:
                await self._create(admin, kafka, missing, report)
            for topic in topics:
                have = report.partitions.get(topic.name)
                if have is None or topic.name in report.created or have == topic.partitions:
                    continue
                if topic.partitions < have:
                    report.problems.append(Problem(
                        "PartitionDecreaseRefused",
                        f"topic {topic.name} has {have} partitions and the spec asks for {topic.partitions}; "
                        f"partitions can only grow, so it keeps {have}"))
                    continue
                try:
                    await admin.create_partitions({topic.name: NewPartitions(topic.partitions)})
                except KafkaError as exc:
                    report.problems.append(Problem(
                        "PartitionGrowthRefused",
                        f"the broker refused to grow topic {topic.name} from {have} to {topic.partitions} "
                        f"partitions ({type(exc).__name__}: {exc}); it keeps {have}"))
                    continue
                report.grown[topic.name] = (have, topic.partitions)
                report.partitions[topic.name] = topic.partitions
        finally:
            await admin.close()
        return report

    async def _create(self, admin: AIOKafkaAdminClient, kafka: KafkaSpec, missing: list[TopicRequest],
                      report: TopicReport) -> None:
        replication = kafka.replication_factor or min(3, len((await admin.describe_cluster())["brokers"]) or 1)
        response = await admin.create_topics([NewTopic(t.name, t.partitions, replication) for t in missing])
        asked = {t.name: t.partitions for t in missing}
        raced: list[str] = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                report.created.append(name)
                report.partitions[name] = asked[name]
            elif code == TOPIC_ALREADY_EXISTS:
                raced.append(name)  # created meanwhile by someone else: count what it has
            else:
                detail = rest[0] if rest and rest[0] else f"error code {code}"
                report.problems.append(Problem("TopicCreationFailed", f"creating topic {name} failed: {detail}"))
        report.partitions |= await _partition_counts(admin, raced)

    async def delete_topics(self, kafka: KafkaSpec, names: Iterable[str]) -> list[str]:
        """Delete those of `names` that exist; returns the names deleted."""
        async with asyncio.timeout(self._timeout):
            admin = make_admin(self.settings_for(kafka))
            await admin.start()
            try:
                doomed = sorted(set(names) & set(await admin.list_topics()))
                if not doomed:
                    return []
                response = await admin.delete_topics(doomed)
                failed = [f"{name} (error code {code})" for name, code, *_ in response.topic_error_codes if code]
                if failed:
                    raise KafkaError(f"deleting topics failed: {', '.join(failed)}")
                return doomed
            finally:
                await admin.close()

    async def lag(self, kafka: KafkaSpec, groups: dict[str, str]) -> dict[str, dict[int, int]]:
        """Exact lag per partition for each `{consumer group: topic}`; topics that do not exist are left out."""
        async with asyncio.timeout(self._timeout):
            return await self._lag(kafka, groups)

    async def _lag(self, kafka: KafkaSpec, groups: dict[str, str]) -> dict[str, dict[int, int]]:
        settings = self.settings_for(kafka)
        result: dict[str, dict[int, int]] = {}
        for group, topic in groups.items():
            partitions = await group_lag(settings, group, [topic])
            if partitions:
                result[group] = {p.partition: p.lag for p in partitions}
        return result

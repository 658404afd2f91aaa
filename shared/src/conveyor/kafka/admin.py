"""Topic administration: create what is missing, never shrink or recreate what exists."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from conveyor.kafka.clients import connection_kwargs
from conveyor.settings import Settings

log = logging.getLogger(__name__)
TOPIC_ALREADY_EXISTS = 36


def make_admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_kwargs(settings), request_timeout_ms=10_000)


async def wait_for_broker(settings: Settings, *, timeout: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        admin = make_admin(settings)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker {settings.bootstrap_servers} unreachable: {exc}") from exc
            await asyncio.sleep(0.3)
        finally:
            await admin.close()


async def ensure_topics(settings: Settings, topics: list[str], *, partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        new = [
            NewTopic(name=t, num_partitions=partitions or settings.partitions, replication_factor=1)
            for t in missing
        ]
        response = await admin.create_topics(new)
        for name, code, *_ in getattr(response, "topic_errors", getattr(response, "topics", [])):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"creating topic {name} failed with error code {code}")
        log.info("created topics %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()


async def describe_partitions(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partition count per topic (0 for a topic that does not exist)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        return {d["topic"]: len(d.get("partitions") or []) for d in described}
    finally:
        await admin.close()

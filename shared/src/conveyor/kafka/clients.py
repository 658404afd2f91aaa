"""aiokafka clients configured from Settings, so every process connects the same way."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from conveyor.settings import Settings


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Bootstrap and security options shared by producers, consumers and admin clients."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return kwargs


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A durable producer: acks from all in-sync replicas before a send counts as done.

    Idempotent producing is left off: the embedded broker rejects InitProducerId, and the
    pipeline's idempotency comes from job ids, not from producer sequence numbers.
    """
    options: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 2,
        # Batches of 16 KB (the default) hold ~6 of our events: with hundreds of records in flight,
        # every send would wait for a batch to drain and retry, all at once. Larger batches do not.
        "max_batch_size": max(262_144, settings.max_message_bytes),
        "max_request_size": settings.max_message_bytes,
        "compression_type": None,
        "client_id": "conveyor",
    }
    options.update(overrides)
    return AIOKafkaProducer(**connection_kwargs(settings), **options)


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A manually committing consumer that starts from the earliest uncommitted record."""
    options: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(1000, settings.session_timeout_ms // 5),
        "max_poll_records": settings.batch_size,
        "fetch_max_bytes": max(52_428_800, settings.max_message_bytes * 2),
        "max_partition_fetch_bytes": max(1_048_576, settings.max_message_bytes + 65_536),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **connection_kwargs(settings), **options)

"""Exports exact consumer-group lag as `conveyor_consumer_lag`, from the always-on gateway.

Workers may be scaled to zero by KEDA, so the figure cannot come from them; it is the same
computation `conveyor lag` prints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from conveyor import metrics
from conveyor.kafka.lag import group_lag
from conveyor.settings import Settings
from conveyor.topics import consumer_group, input_topic

log = logging.getLogger(__name__)


async def export_lag_once(settings: Settings) -> int:
    """Export every partition's lag; returns the backlog of the most backed-up stage."""
    prefix = settings.topic_prefix
    backlog = 0
    for stage in settings.pipeline_stages:
        stage_lag = 0
        for part in await group_lag(settings, consumer_group(stage, prefix), [input_topic(stage, prefix)]):
            metrics.CONSUMER_LAG.labels(part.group, part.topic, str(part.partition)).set(part.lag)
            stage_lag += part.lag
        backlog = max(backlog, stage_lag)
    return backlog


async def export_lag_forever(settings: Settings, measured: Callable[[int], None]) -> None:
    while True:
        try:
            measured(await export_lag_once(settings))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed scrape must not stop the gateway
            log.warning("lag export failed: %s", exc)
        await asyncio.sleep(settings.lag_interval_seconds)

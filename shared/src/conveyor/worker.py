"""Process runtime for one stage worker: logging, tracing, stores, probes, signals, the loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

from conveyor import tracing
from conveyor.errors import ConfigurationError
from conveyor.health import serve_probes
from conveyor.kafka.admin import ensure_topics, wait_for_broker
from conveyor.kafka.stage import Stage, StageWorker
from conveyor.logging import setup_logging
from conveyor.settings import Settings, load_settings
from conveyor.stores import open_blob_store, open_job_store
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore
from conveyor.topics import BindingError, stage_bindings

log = logging.getLogger(__name__)

StageFactory = Callable[[Settings, JobStore, BlobStore, AsyncExitStack], Stage]

READY_STALE_SECONDS = 30.0


def main(stage_name: str, build_stage: StageFactory) -> int:
    """Entry point of a stage's worker process (`conveyor-<stage>`): settings from the environment."""
    settings = load_settings()
    try:
        stage_bindings(stage_name, settings)
    except BindingError as exc:
        print(f"conveyor-{stage_name}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_worker(stage_name, build_stage, settings))
    except ConfigurationError as exc:
        print(f"conveyor-{stage_name}: {exc}", file=sys.stderr)
        return 2
    return 0


async def run_worker(stage_name: str, build_stage: StageFactory, settings: Settings) -> None:
    """Run one stage until SIGTERM/SIGINT, then finish the batch in hand, commit and leave the group."""
    setup_logging(settings.log_level, json=settings.log_json, service=stage_name)
    tracing.setup_tracing(stage_name, console=settings.trace_console)
    await wait_for_broker(settings)
    if settings.create_topics:
        bindings = stage_bindings(stage_name, settings)
        await ensure_topics(settings, [bindings.input_topic, bindings.dlq_topic])
    async with AsyncExitStack() as resources:
        store = open_job_store(settings)
        resources.push_async_callback(store.close)
        blobs = open_blob_store(settings)
        worker = StageWorker(build_stage(settings, store, blobs, resources), settings, store, blobs=blobs)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        if settings.metrics_port:
            server = await serve_probes(
                settings.metrics_host, settings.metrics_port,
                ready=lambda: worker.ready and time.monotonic() - worker.last_poll < READY_STALE_SECONDS,
                alive=worker.alive,
            )
            resources.push_async_callback(_close_server, server)
            log.info("%s probes and metrics on %s:%d", stage_name, settings.metrics_host, settings.metrics_port)
        await worker.run()
    tracing.shutdown_tracing()


async def _close_server(server: asyncio.base_events.Server) -> None:
    server.close()
    await server.wait_closed()

"""`conveyor-operator`: run the Pipeline operator until SIGTERM.

Exactly one instance may run: the Deployment has `replicas: 1` and the `Recreate` strategy, and
kopf runs standalone (no peering resources to install or grant).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server
from pydantic import ValidationError

from conveyor.operator.config import OperatorConfig
from conveyor.operator.handlers import FINALIZER, build_registry
from conveyor.operator.kafka_admin import KafkaAdmin
from conveyor.operator.reconciling import Runtime
from conveyor.settings import invalid_settings, load_settings
from conveyor.variables import unknown_variables, variables_of

ANNOTATION_PREFIX = "conveyor.dev"


def make_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """kopf settings: own finalizer name, bookkeeping in `conveyor.dev/` annotations, no peering."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.peering.standalone = True
    # A Pipeline being deleted waits for its reconcile timer to stop; check every second, not 60 s.
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.INFO
    # Watching named namespaces needs no cluster-wide discovery of CRDs or namespaces.
    settings.scanning.disabled = bool(config.namespace_list())
    return settings


async def serve(config: OperatorConfig, runtime: Runtime, *, stop_flag: asyncio.Event | None = None,
                ready_flag: asyncio.Event | None = None) -> None:
    """Run the operator in the current event loop until `stop_flag` is set or a signal arrives."""
    namespaces = config.namespace_list()
    await kopf.operator(
        registry=build_registry(runtime),
        settings=make_settings(config),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run() -> int:
    """Entry point of `conveyor-operator`; returns the process exit code."""
    unknown = unknown_variables(os.environ, variables_of(OperatorConfig), prefix="CONVEYOR_OPERATOR_")
    if unknown:
        print("\n".join(unknown), file=sys.stderr)
        return 2
    try:
        config = OperatorConfig()
    except ValidationError as exc:
        print("\n".join(invalid_settings(exc, OperatorConfig)), file=sys.stderr)
        return 2
    settings = load_settings()
    kopf.configure(debug=settings.log_level.upper() == "DEBUG",
                   quiet=settings.log_level.upper() in ("WARNING", "ERROR", "CRITICAL"),
                   log_format=kopf.LogFormat.JSON if settings.log_json else kopf.LogFormat.FULL)
    if config.metrics_port:
        start_http_server(config.metrics_port)
    runtime = Runtime(config=config, kafka=KafkaAdmin(settings, timeout=config.kafka_timeout_seconds))
    asyncio.run(serve(config, runtime))
    return 0

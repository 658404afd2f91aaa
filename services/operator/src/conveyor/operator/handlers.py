"""kopf handlers for Pipeline resources, registered on a registry of their own by `build_registry`.

- create / update / resume: reconcile at once; an invalid spec sets the Invalid phase and a condition
  naming the field, then stops (kopf.PermanentError: no retry until the spec changes).
- timer (CONVEYOR_OPERATOR_RECONCILE_SECONDS): the same reconcile, level-based, so drift is repaired
  and status (readiness, exact lag) stays fresh; it never raises on an invalid spec.
- delete: a finalizer that deletes or keeps the topics per spec.deleteTopicsOnDelete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from conveyor.operator import metrics
from conveyor.operator.builders import GROUP, PLURAL, VERSION
from conveyor.operator.kube import PIPELINES, ApiError, KubeClient, status_code
from conveyor.operator.reconciling import KAFKA_FAILURES, Runtime, finalize, reconcile
from conveyor.pipeline import SpecError
from conveyor.operator.status import changed_fields, invalid_status

FINALIZER = "conveyor.dev/topics"
DELETE_RETRIES = 10

Logger = logging.Logger | logging.LoggerAdapter


async def _write_status(runtime: Runtime, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Patch `.status` with what changed (nothing changed: no write). Called under the Pipeline's lock,
    so a slower reconcile of an older generation can never land after a newer one."""
    changes = changed_fields(body.get("status"), status)
    if not changes:
        return
    meta = body["metadata"]
    try:
        await runtime.api().patch_status(PIPELINES, meta["namespace"], meta["name"], changes)
    except ApiError as exc:
        if status_code(exc) != 404:  # 404: deleted meanwhile, nothing to report on
            raise


async def ensure_pipeline(runtime: Runtime, *, trigger: str, body: kopf.Body, logger: Logger,
                          stopped: Any = None) -> None:
    """Reconcile now; raise kopf.PermanentError for a spec that cannot be applied.

    `stopped` (timers only) is kopf's stop flag: once set, the status is no longer written, since
    a write would wake the stopping operator and restart the timer it is stopping.
    """
    if body.get("metadata", {}).get("deletionTimestamp"):
        return  # being deleted: the finalizer decides what happens now
    started = time.monotonic()
    async with runtime.lock(body["metadata"]["uid"]):
        if body.get("metadata", {}).get("deletionTimestamp"):
            return  # deleted while waiting for the lock (the timer's body is live)
        generation = body.get("metadata", {}).get("generation")
        try:
            result = await reconcile(runtime, body, logger)
        except SpecError as exc:
            metrics.RECONCILES.labels(trigger, "invalid").inc()
            await _write_status(runtime, body, invalid_status(generation=generation, message=str(exc),
                                                              previous=body.get("status")))
            if trigger == "timer":
                return  # already reported; retrying cannot help until the spec changes
            raise kopf.PermanentError(f"invalid Pipeline spec: {exc}") from None
        except Exception:
            metrics.RECONCILES.labels(trigger, "error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)
        for child, action in result.actions.items():
            logger.info("%s %s", action, child)
        if not stopped:
            await _write_status(runtime, body, result.status)
    metrics.RECONCILES.labels(trigger, "ok").inc()


async def reconcile_until_stopped(runtime: Runtime, *, body: kopf.Body, logger: Logger, stopped: Any) -> None:
    """The timer's reconcile, abandoned as soon as kopf stops the timer (the Pipeline is being deleted
    or the operator exits): kopf does not wait for a busy timer, and a reconcile is safe to cut
    short since the next one starts over from the spec."""
    if stopped:
        return
    work = asyncio.ensure_future(ensure_pipeline(runtime, trigger="timer", body=body, logger=logger,
                                                 stopped=stopped))

    async def stop_requested() -> None:
        await stopped.wait()

    stop = asyncio.ensure_future(stop_requested())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stop):
            task.cancel()
        await asyncio.gather(work, stop, return_exceptions=True)
    if work.done() and not work.cancelled() and work.exception() is not None:
        raise work.exception()  # type: ignore[misc]


async def delete_pipeline(runtime: Runtime, *, body: kopf.Body, logger: Logger) -> None:
    try:
        async with runtime.lock(body["metadata"]["uid"]):
            for line in await finalize(runtime, body, logger):
                logger.info("%s", line)
    except SpecError as exc:
        metrics.RECONCILES.labels("delete", "invalid").inc()
        raise kopf.PermanentError(f"topics not deleted, the spec does not name them: {exc}") from None
    except KAFKA_FAILURES as exc:
        metrics.RECONCILES.labels("delete", "error").inc()
        raise kopf.TemporaryError(f"deleting topics failed ({type(exc).__name__}: {exc}); retrying",
                                  delay=runtime.config.retry_seconds) from None
    metrics.RECONCILES.labels("delete", "ok").inc()
    runtime.locks.pop(body["metadata"]["uid"], None)


def login(runtime: Runtime, /, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then KUBECONFIG; the API client shares the credentials."""
    def find() -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    info = find()
    if info is not None and runtime.kube is None:
        runtime.kube = KubeClient(info, relogin=find)
    return info


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """A registry with every handler bound to `runtime` (settings, Kafka side, API client)."""
    registry = kopf.OperatorRegistry()
    pipelines: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL, "registry": registry}
    retry = runtime.config.retry_seconds

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return login(runtime, **kwargs)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        if runtime.kube is not None:
            await runtime.kube.aclose()
            runtime.kube = None

    for reason, decorator in (("create", kopf.on.create), ("update", kopf.on.update), ("resume", kopf.on.resume)):
        def bind(trigger: str) -> Any:
            async def handler(body: kopf.Body, logger: Logger, **_: Any) -> None:
                await ensure_pipeline(runtime, trigger=trigger, body=body, logger=logger)
            return handler
        decorator(**pipelines, id=f"ensure-on-{reason}", backoff=retry)(bind(reason))

    @kopf.timer(**pipelines, id="reconcile", interval=runtime.config.reconcile_seconds,
                initial_delay=runtime.config.reconcile_seconds, backoff=runtime.config.reconcile_seconds)
    async def _reconcile(body: kopf.Body, logger: Logger, stopped: Any, **_: Any) -> None:
        await reconcile_until_stopped(runtime, body=body, logger=logger, stopped=stopped)

    @kopf.on.delete(**pipelines, id="finalize", backoff=retry, retries=DELETE_RETRIES)
    async def _finalize(body: kopf.Body, logger: Logger, **_: Any) -> None:
        await delete_pipeline(runtime, body=body, logger=logger)

    return registry

"""One level-based reconcile of a Pipeline: make every owned object match the spec, then observe.

Called for create/update/resume and by the timer alike, so running it twice changes nothing the
second time, and a child deleted or edited by hand comes back to shape on the next run.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from conveyor.operator import builders, metrics
from conveyor.operator.applying import ensure_object
from conveyor.operator.builders import PIPELINE_LABEL, STAGE_LABEL, Owner
from conveyor.operator.config import OperatorConfig
from conveyor.operator.kafka_admin import TopicReport, TopicRequest
from conveyor.operator.kube import DEPLOYMENTS, SCALED_OBJECTS, TOPICS, ApiError, KubeClient, status_code
from conveyor.pipeline import KafkaSpec, PipelineSpec, parse_spec
from conveyor.operator.status import Problem, StageObservation, build_status

KAFKA_FAILURES = (KafkaError, OSError, TimeoutError)


class Kafka(Protocol):
    async def ensure_topics(self, kafka: KafkaSpec, topics: list[TopicRequest]) -> TopicReport: ...
    async def delete_topics(self, kafka: KafkaSpec, names: list[str]) -> list[str]: ...
    async def lag(self, kafka: KafkaSpec, groups: dict[str, str]) -> dict[str, dict[int, int]]: ...


@dataclass
class Runtime:
    """What every handler shares: settings, the Kafka side and (after login) the API client."""

    config: OperatorConfig
    kafka: Kafka
    kube: KubeClient | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        """One reconcile at a time per Pipeline: the timer and a change handler never interleave."""
        return self.locks.setdefault(uid, asyncio.Lock())

    def api(self) -> KubeClient:
        if self.kube is None:
            raise RuntimeError("not logged in to the Kubernetes API yet")
        return self.kube


@dataclass
class Result:
    status: dict[str, Any]
    actions: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> created | patched | deleted


def _owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


MISSING_KINDS = {
    "ScaledObject": ("KedaNotInstalled", "the API server does not serve scaledobjects.keda.sh/v1alpha1; install KEDA"),
    "Topic": ("RedpandaOperatorNotInstalled", "the API server does not serve topics.cluster.redpanda.com/v1alpha2; "
                                              "install the Redpanda operator or set spec.kafka.mode to external"),
}


async def _ensure(kube: KubeClient, desired: Mapping[str, Any], result: Result, problems: list[Problem],
                  *, current: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """ensure_object, recording the action; a kind the cluster does not serve becomes a Problem."""
    try:
        action, obj = await ensure_object(kube, desired, current=current)
    except ApiError as exc:
        if status_code(exc) != 404 or desired["kind"] not in MISSING_KINDS:
            raise
        problem = Problem(*MISSING_KINDS[desired["kind"]])
        if problem not in problems:
            problems.append(problem)
        return None
    if action != "unchanged":
        result.actions[f"{desired['kind']}/{desired['metadata']['name']}"] = action
    return obj


async def _redpanda_topics(kube: KubeClient, spec: PipelineSpec, owner: Owner, result: Result,
                           problems: list[Problem]) -> dict[str, int]:
    partitions: dict[str, int] = {}
    for stage in spec.stages:
        for dead_letter in (False, True):
            desired = builders.build_topic(spec, stage, owner, dead_letter=dead_letter)
            topic = desired["spec"]["overwriteTopicName"]
            current = await kube.get(TOPICS, owner.namespace, desired["metadata"]["name"])
            have = (current or {}).get("spec", {}).get("partitions")
            if isinstance(have, int) and have > stage.partitions:
                problems.append(Problem(
                    "PartitionDecreaseRefused",
                    f"topic {topic} has {have} partitions and spec.stages[{spec.stages.index(stage)}].partitions "
                    f"asks for {stage.partitions}; partitions can only grow, so it keeps {have}"))
                desired = builders.build_topic(spec, stage, owner, dead_letter=dead_letter, partitions=have)
            if await _ensure(kube, desired, result, problems, current=current) is not None:
                partitions[topic] = desired["spec"]["partitions"]
    return partitions


async def _external_topics(kafka: Kafka, spec: PipelineSpec, problems: list[Problem]) -> dict[str, int]:
    requests = [TopicRequest(name, stage.partitions) for stage in spec.stages
                for name in (spec.input_topic(stage), spec.dlq_topic(stage))]
    try:
        report = await kafka.ensure_topics(spec.kafka, requests)
    except KAFKA_FAILURES as exc:
        problems.append(Problem("KafkaUnavailable", f"cannot manage topics on {spec.kafka.bootstrap_servers}: "
                                                    f"{type(exc).__name__}: {exc}"))
        return {}
    problems.extend(report.problems)
    return report.partitions


async def _prune(kube: KubeClient, spec: PipelineSpec, owner: Owner, result: Result) -> None:
    """Delete workers and scalers of stages no longer in the spec (their topics stay)."""
    wanted = {stage.name for stage in spec.stages}
    for kind in (SCALED_OBJECTS, DEPLOYMENTS):
        for obj in await kube.list(kind, owner.namespace, {PIPELINE_LABEL: owner.name}):
            meta = obj["metadata"]
            if (meta.get("labels") or {}).get(STAGE_LABEL) not in wanted and _owned_by(obj, owner):
                if await kube.delete(kind, owner.namespace, meta["name"]):
                    metrics.OBJECT_CHANGES.labels(kind.__name__, "deleted").inc()
                    result.actions[f"{kind.__name__}/{meta['name']}"] = "deleted"


async def _lag(kafka: Kafka, spec: PipelineSpec, logger: logging.Logger | logging.LoggerAdapter) -> dict[str, int]:
    groups = {spec.consumer_group(stage): spec.input_topic(stage) for stage in spec.stages}
    try:
        per_partition = await kafka.lag(spec.kafka, groups)
    except KAFKA_FAILURES as exc:
        logger.warning("cannot read consumer lag from %s: %s: %s", spec.kafka.bootstrap_servers,
                       type(exc).__name__, exc)
        return {}
    return {group: sum(parts.values()) for group, parts in per_partition.items()}


async def reconcile(runtime: Runtime, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter
                    ) -> Result:
    """Apply the spec to every owned object and return the status to write. Raises SpecError."""
    generation = body.get("metadata", {}).get("generation")  # read with the spec: kopf's body is live
    spec = parse_spec(copy.deepcopy(body.get("spec")))
    owner = Owner.from_body(body)
    kube = runtime.api()
    result = Result(status={})
    problems: list[Problem] = []

    if spec.kafka.mode == "redpanda":
        partitions = await _redpanda_topics(kube, spec, owner, result, problems)
    else:
        partitions = await _external_topics(runtime.kafka, spec, problems)

    deployments: dict[str, dict[str, Any]] = {}
    for stage in spec.stages:
        deployment = builders.build_deployment(spec, stage, owner)
        deployments[stage.name] = await _ensure(kube, deployment, result, problems) or {}
        await _ensure(kube, builders.build_scaled_object(spec, stage, owner), result, problems)
    await _prune(kube, spec, owner, result)

    unreachable = any(p.reason == "KafkaUnavailable" for p in problems)
    lags = {} if unreachable else await _lag(runtime.kafka, spec, logger)
    stages = []
    for stage in spec.stages:
        deployment = deployments[stage.name]
        stages.append(StageObservation(
            name=stage.name,
            input_topic=spec.input_topic(stage),
            consumer_group=spec.consumer_group(stage),
            partitions=partitions.get(spec.input_topic(stage)),
            replicas=deployment.get("spec", {}).get("replicas"),
            ready_replicas=int((deployment.get("status") or {}).get("readyReplicas") or 0),
            deployed=bool(deployment),
            lag=lags.get(spec.consumer_group(stage)),
        ))
    result.status = build_status(generation=generation, stages=stages,
                                 problems=problems, previous=body.get("status"))
    return result


async def finalize(runtime: Runtime, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter
                   ) -> list[str]:
    """Before the Pipeline goes: delete its topics if spec.deleteTopicsOnDelete, else make sure they stay.

    Workers and scalers are left to garbage collection through their owner references. Redpanda
    Topic resources are owned too, so keeping topics means releasing them (removing the owner
    reference) first; deleting them lets the Redpanda operator delete the topics.
    Returns a line per thing done, for the log.
    """
    raw = body.get("spec") or {}
    owner = Owner.from_body(body)
    delete = bool(raw.get("deleteTopicsOnDelete"))
    done: list[str] = []
    if (raw.get("kafka") or {}).get("mode") == "redpanda":
        kube = runtime.api()
        for topic in await kube.list(TOPICS, owner.namespace, {PIPELINE_LABEL: owner.name}):
            name = topic["metadata"]["name"]
            if not _owned_by(topic, owner):
                continue
            if delete:
                if await kube.delete(TOPICS, owner.namespace, name):
                    metrics.OBJECT_CHANGES.labels("Topic", "deleted").inc()
                    done.append(f"deleted Topic {name}")
            else:
                refs = [r for r in topic["metadata"].get("ownerReferences") or [] if r.get("uid") != owner.uid]
                # A merge patch, not an apply: it edits one list and leaves the applied config alone.
                await kube.merge_patch(TOPICS, owner.namespace, name, {"metadata": {"ownerReferences": refs or None}})
                done.append(f"released Topic {name} (the topic and its data stay)")
        return done
    if delete:
        spec = parse_spec(raw)  # SpecError: an invalid spec cannot name its topics, so none are deleted
        names = spec.topics()
        deleted = await runtime.kafka.delete_topics(spec.kafka, names)
        done += [f"deleted topic {name}" for name in deleted]
    return done

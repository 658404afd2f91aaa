"""Pure functions from a Pipeline spec to the objects it owns: per stage a Deployment and a KEDA
ScaledObject, and (mode redpanda) a Redpanda Topic for the stage's input and dead-letter topics.

No I/O here: the same spec always gives the same objects, so tests validate them offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.pipeline import PipelineSpec, StageSpec

GROUP = "conveyor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Pipeline"
PLURAL = "pipelines"

PIPELINE_LABEL = "conveyor.dev/pipeline"
STAGE_LABEL = "conveyor.dev/stage"
MANAGED_BY = "conveyor-operator"
METRICS_PORT = 9100
HOME = "/var/lib/conveyor"  # CONVEYOR_HOME of the Conveyor images


@dataclass(frozen=True)
class Owner:
    """The Pipeline object children point back at."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def labels(owner: Owner, stage: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "conveyor",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        PIPELINE_LABEL: owner.name,
    }
    if stage is not None:
        result |= {"app.kubernetes.io/component": stage, STAGE_LABEL: stage}
    return result


def selector(owner: Owner, stage: str) -> dict[str, str]:
    """The Deployment's immutable selector: only labels that never change for a stage."""
    return {PIPELINE_LABEL: owner.name, STAGE_LABEL: stage}


def child_name(owner: Owner, stage: StageSpec) -> str:
    return f"{owner.name}-{stage.name}"


def _metadata(name: str, owner: Owner, stage: str | None) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner, stage),
            "ownerReferences": [owner.reference()]}


def _env(spec: PipelineSpec, stage: StageSpec) -> list[dict[str, Any]]:
    generated = {
        "CONVEYOR_BOOTSTRAP_SERVERS": spec.kafka.bootstrap_servers,
        "CONVEYOR_METRICS_PORT": str(METRICS_PORT),
        "CONVEYOR_HOME": HOME,
        **spec.stage_env(stage),
    }
    overridden = {e.name for e in stage.env}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in generated.items() if k not in overridden]
    for var in stage.env:
        env.append(var.model_dump(by_alias=True, exclude_none=True))
    return env


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def build_deployment(spec: PipelineSpec, stage: StageSpec, owner: Owner) -> dict[str, Any]:
    """The stage's worker Deployment, shaped like the chart's workers (probes on 9100, read-only
    root filesystem, writable /tmp and home). No `spec.replicas`: KEDA sets it, and a field left out
    of the applied config is one the operator never owns, so no reconcile resets KEDA's count."""
    command, args = stage.container_command()
    container: dict[str, Any] = {
        "name": stage.name,
        "image": stage.image,
        "command": command,
        "args": args,
        "env": _env(spec, stage),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/healthz", period=2, failures=45),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}],
    }
    if stage.image_pull_policy:
        container["imagePullPolicy"] = stage.image_pull_policy
    if stage.resources:
        container["resources"] = {k: dict(v) for k, v in stage.resources.items()}
    if spec.env_from:
        container["envFrom"] = [dict(source) for source in spec.env_from]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(child_name(owner, stage), owner, stage.name),
        "spec": {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(owner, stage.name)},
            "template": {
                "metadata": {
                    "labels": labels(owner, stage.name),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)},
                },
                "spec": {
                    "containers": [container],
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}],
                },
            },
        },
    }


def build_scaled_object(spec: PipelineSpec, stage: StageSpec, owner: Owner) -> dict[str, Any]:
    """KEDA ScaledObject: scale the stage's Deployment on its consumer group's lag."""
    trigger: dict[str, Any] = {
        "type": "kafka",
        "name": f"{stage.name}-lag",
        "metadata": {
            "bootstrapServers": spec.kafka.bootstrap_servers,
            "consumerGroup": spec.consumer_group(stage),
            "topic": spec.input_topic(stage),
            "lagThreshold": str(stage.lag_threshold),
            "activationLagThreshold": str(stage.activation_lag_threshold),
            "offsetResetPolicy": "earliest",  # as the workers' consumers: a new group starts at the oldest
            "allowIdleConsumers": "false",
            # A stage waiting out an outage (circuit breaker open) holds its offsets, so its lag stands
            # still; scaling it up would not help. KEDA leaves out partitions whose offset did not move.
            "excludePersistentLag": "true",
        },
    }
    if spec.kafka.keda_authentication_ref:
        trigger["authenticationRef"] = {"name": spec.kafka.keda_authentication_ref}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(child_name(owner, stage), owner, stage.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(owner, stage)},
            "minReplicaCount": stage.min_replicas,
            "maxReplicaCount": stage.replicas_ceiling,
            "triggers": [trigger],
        },
    }


def build_topic(spec: PipelineSpec, stage: StageSpec, owner: Owner, *, dead_letter: bool,
                partitions: int | None = None) -> dict[str, Any]:
    """A Redpanda Topic for the stage's input (or dead-letter) topic; `partitions` overrides the spec."""
    topic = spec.dlq_topic(stage) if dead_letter else spec.input_topic(stage)
    name = child_name(owner, stage) + ("-dlq" if dead_letter else "")
    cluster_ref: dict[str, Any] = {"name": spec.kafka.cluster_ref.name} if spec.kafka.cluster_ref else {}
    if spec.kafka.cluster_ref and spec.kafka.cluster_ref.namespace:
        cluster_ref["namespace"] = spec.kafka.cluster_ref.namespace
    body: dict[str, Any] = {
        "apiVersion": "cluster.redpanda.com/v1alpha2",
        "kind": "Topic",
        "metadata": _metadata(name, owner, stage.name),
        "spec": {
            "cluster": {"clusterRef": cluster_ref},
            "overwriteTopicName": topic,
            "partitions": partitions if partitions is not None else stage.partitions,
        },
    }
    if spec.kafka.replication_factor is not None:
        body["spec"]["replicationFactor"] = spec.kafka.replication_factor
    return body


def build_topics(spec: PipelineSpec, stage: StageSpec, owner: Owner) -> list[dict[str, Any]]:
    return [build_topic(spec, stage, owner, dead_letter=False), build_topic(spec, stage, owner, dead_letter=True)]


def build_children(spec: PipelineSpec, owner: Owner) -> list[dict[str, Any]]:
    """Every object the Pipeline owns, in creation order (topics first, then workers, then scalers)."""
    children: list[dict[str, Any]] = []
    if spec.kafka.mode == "redpanda":
        children += [t for stage in spec.stages for t in build_topics(spec, stage, owner)]
    children += [build_deployment(spec, stage, owner) for stage in spec.stages]
    children += [build_scaled_object(spec, stage, owner) for stage in spec.stages]
    return children

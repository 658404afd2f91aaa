"""The real operator (kopf, in the test's event loop) against kmock, a Kubernetes API emulator.

kmock stores objects and streams watch events but does nothing else, so the tests add what an API
server does (uid, resourceVersion, generation, defaults, server-side apply with field ownership)
and play the Deployment controller and KEDA themselves when readiness or replicas matter. Kafka is a recording fake here; tests/test_operator_kafka.py covers the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import pytest
import yaml

from conveyor.operator.config import OperatorConfig
from conveyor.operator.kafka_admin import TopicReport, TopicRequest
from conveyor.operator.main import serve
from conveyor.operator.reconciling import Runtime
from conveyor.pipeline import KafkaSpec

import server_side_apply as ssa

pytestmark = pytest.mark.timeout(30)

NS = "media"
PIPELINES = "conveyor.dev/v1alpha1/pipelines"
DEPLOYMENTS = "apps/v1/deployments"
SCALED_OBJECTS = "keda.sh/v1alpha1/scaledobjects"
TOPICS = "cluster.redpanda.com/v1alpha2/topics"
CLOSE = {"Connection": "close"}
TICK = 0.3  # the reconcile timer's interval in these tests
OPERATOR = "conveyor-operator"  # the operator's field manager
KEDA = "keda-operator"
CHILDREN = {kmock.resource(r) for r in (DEPLOYMENTS, SCALED_OBJECTS, TOPICS)}
_versions = itertools.count(1)


def _merged(base: Any, patch: Any) -> Any:
    if not isinstance(base, Mapping) or not isinstance(patch, Mapping):
        return patch
    result = dict(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(base.get(key), value)
    return result


APPLY = "application/apply-patch+yaml"


def _is_apply(request: kmock.Request) -> bool:
    return (request.method == kmock.method.PATCH
            and request.headers.get("Content-Type", "").split(";")[0].strip() == APPLY)


def _stamp_creation(obj: dict[str, Any], resource: Any) -> None:
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    meta |= {"generation": 1, "resourceVersion": str(next(_versions))}
    if resource == kmock.resource(DEPLOYMENTS) and isinstance(obj.get("spec"), dict):
        obj["spec"].setdefault("replicas", 1)  # the API server's default for a Deployment


class Cluster(kmock.KubernetesEmulator):
    """kmock plus what an API server does on writes: uid, creationTimestamp, resourceVersion and
    generation; a Deployment's default of one replica; server-side apply with field ownership
    (tests/server_side_apply.py), merge patches moving the fields they change to their manager."""

    token: str | None = None  # when set, the operator's requests must carry it, as a rotated token is

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if (self.token is not None and not request.headers.get("User-Agent", "").startswith("kmock/")
                and request.headers.get("Authorization") != f"Bearer {self.token}"):
            raise kmock.KubernetesError(status=401, reason="Unauthorized", message="Unauthorized")
        if request.resource is not None and request.resource.plural and request.resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()  # a kind whose CRD is not installed
        if request.resource is not None and request.name and _is_apply(request):
            return await self._serve_apply(request)
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(data, dict):
            _stamp_creation(data, request.resource)
        elif request.resource is not None and request.action == kmock.action.UPDATE and request.name:
            current = self.current(request.resource, request.namespace, request.name)
            if current is not None and isinstance(data, dict):
                if request.subresource is None:
                    manager = request.params.get("fieldManager") or request.headers.get("User-Agent", "unknown")
                    data.setdefault("metadata", {})["managedFields"] = ssa.update(current, data, manager.split("/")[0])
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(_versions))
                spec = data.get("spec") if request.subresource is None else None
                if spec is not None and _merged(current.get("spec"), spec) != current.get("spec"):
                    meta["generation"] = current["metadata"].get("generation", 1) + 1
            elif current is not None and isinstance(data, list):  # a JSON patch (kopf's finalizer edits)
                data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": str(next(_versions))})
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:  # a stale resourceVersion: the API server says 422
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None

    async def _render_error(self, exc: Exception) -> Any:
        response = await super()._render_error(exc)
        response.headers["Content-Type"] = "application/json"  # as an API server sends a Status (no charset)
        return response

    async def _serve_apply(self, request: kmock.Request) -> aiohttp.web.Response:
        """Create the object or merge the applied config into it; an apply that changes nothing
        writes nothing (no new resourceVersion, no watch event), as on an API server. Served here
        rather than by kmock's fallbacks, which know no create-or-update verb; it takes kmock's
        lock and watch bus as its own writes do."""
        manager = request.params.get("fieldManager")
        if not manager:
            raise kmock.KubernetesError(status=422, reason="Invalid", message="fieldManager is required for apply")
        config = request.data if isinstance(request.data, dict) else yaml.safe_load(request.text)
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            current = self.current(*key)
            try:
                applied = ssa.apply(current, config, manager, force=request.params.get("force") == "true")
            except ssa.Conflict as exc:
                raise kmock.KubernetesError(status=409, reason="Conflict", message=str(exc)) from None
            if current is None:
                _stamp_creation(applied, request.resource)
                if key in self.objects:
                    self.objects[key].create(applied)  # again, after a deletion
                else:
                    self.objects[key] = applied
                await self._buses[request.resource].put({"type": "ADDED", "object": self.objects[key].raw})
            elif applied != current:
                applied["metadata"]["resourceVersion"] = str(next(_versions))
                if applied.get("spec") != current.get("spec"):
                    applied["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
                self.objects[key].patch([{"op": "replace", "path": "", "value": applied}])
                await self._buses[request.resource].put({"type": "MODIFIED", "object": self.objects[key].raw})
            return aiohttp.web.json_response(self.objects[key].raw, status=201 if current is None else 200)

    def current(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def versions(self, resource: str, name: str) -> int:
        """How many times the object was written: its creation plus every patch."""
        return len(self.objects[resource, NS, name].history)

    def names(self, resource: str) -> list[str]:
        return sorted(name for (res, ns, name), obj in self.objects.items()
                      if res == kmock.resource(resource) and ns == NS and not obj.deleted)

    def status_writes(self, resource: str, name: str) -> int:
        return sum(1 for r in self  # iterating a kmock handler yields the requests it served
                   if r.resource == kmock.resource(resource) and r.name == name and r.subresource == "status"
                   and r.action == kmock.action.UPDATE)


@dataclass
class FakeKafka:
    """Records topic work; answers lag from `lags` ({group: {partition: lag}})."""

    lags: dict[str, dict[int, int]] = field(default_factory=dict)
    ensured: list[list[TopicRequest]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    async def ensure_topics(self, kafka: KafkaSpec, topics: list[TopicRequest]) -> TopicReport:
        self.ensured.append(list(topics))
        return TopicReport(partitions={t.name: t.partitions for t in topics})

    async def delete_topics(self, kafka: KafkaSpec, names: list[str]) -> list[str]:
        self.deleted += names
        return list(names)

    async def lag(self, kafka: KafkaSpec, groups: dict[str, str]) -> dict[str, dict[int, int]]:
        return {group: self.lags[group] for group in groups if group in self.lags}


@dataclass
class Operator:
    cluster: Cluster
    kafka: Any
    task: asyncio.Task[None]

    # The test's own requests close their connections: a kept-alive one leaves a server task that
    # kopf, at exit, waits 5 s for (it counts every task created after its start as its own).
    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.cluster.post(f"/apis/conveyor.dev/v1alpha1/namespaces/{NS}/pipelines", json=body,
                                           headers=CLOSE)
        assert response.status == 200, await response.text()
        return await response.json()

    async def patch(self, path: str, patch: dict[str, Any], *, manager: str = "kubectl-patch") -> None:
        response = await self.cluster.patch(path, json=patch, params={"fieldManager": manager},
                                            headers=CLOSE | {"Content-Type": "application/merge-patch+json"})
        assert response.status == 200, await response.text()

    async def scale(self, deployment: str, replicas: int) -> None:
        """Play KEDA: set a Deployment's replica count."""
        await self.patch(path(DEPLOYMENTS, deployment), {"spec": {"replicas": replicas}}, manager=KEDA)

    async def delete(self, path: str) -> None:
        response = await self.cluster.delete(path, headers=CLOSE)
        assert response.status == 200, await response.text()

    def pipeline(self, name: str) -> dict[str, Any] | None:
        return self.cluster.current(kmock.resource(PIPELINES), NS, name)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.cluster.current(kmock.resource(resource), NS, name)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 8.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
        except (KeyError, TypeError, IndexError):
            result = None
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def condition(body: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    return next(c for c in (body or {}).get("status", {}).get("conditions", []) if c["type"] == type_)


def pipeline(name: str = "docs", *, mode: str = "redpanda", delete_topics: bool = False,
             stages: list[dict[str, Any]] | None = None, bootstrap: str = "kafka:9092",
             prefix: str = "conveyor") -> dict[str, Any]:
    kafka: dict[str, Any] = {"bootstrapServers": bootstrap, "topicPrefix": prefix, "mode": mode}
    if mode == "redpanda":
        kafka["clusterRef"] = {"name": "redpanda"}
    return {
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"kafka": kafka, "deleteTopicsOnDelete": delete_topics, "stages": stages or [
            {"name": "extractor", "image": "conveyor:0.1.0", "partitions": 6, "minReplicas": 0},
            {"name": "notifier", "image": "conveyor:0.1.0", "partitions": 3, "minReplicas": 1, "maxReplicas": 3},
        ]},
    }


def path(resource: str, name: str, subresource: str | None = None) -> str:
    group_version, plural = resource.rsplit("/", 1)
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{root}/namespaces/{NS}/{plural}/{name}" + (f"/{subresource}" if subresource else "")


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with Cluster() as emulator, kmock.Server(emulator) as server:
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        emulator.resources[PIPELINES] = kmock.ResourceInfo(kind="Pipeline", namespaced=True, verbs=verbs,
                                                           subresources={"status"}, shortnames={"cpl"})
        for resource, kind in ((DEPLOYMENTS, "Deployment"), (SCALED_OBJECTS, "ScaledObject"),
                               (TOPICS, "Topic"), ("v1/events", "Event"), ("v1/namespaces", "Namespace")):
            emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs,
                                                              subresources={"status"})
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield emulator


@contextlib.asynccontextmanager
async def running_operator(cluster: Cluster, kafka: Any = None) -> AsyncIterator[Operator]:
    """The operator as a task of this test's own task: kopf cancels, at exit, every task created
    after its start, so it must also be stopped from the task that started it (not a fixture's)."""
    config = OperatorConfig(namespaces=NS, reconcile_seconds=TICK, retry_seconds=TICK,
                            health_port=0, metrics_port=0)
    if kafka is None:
        kafka = FakeKafka(lags={"conveyor-extractor": {0: 4, 1: 1}, "conveyor-notifier": {0: 0, 1: 2, 2: 0}})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config, Runtime(config=config, kafka=kafka), stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), timeout=10)
    try:
        yield Operator(cluster, kafka, task)
        assert not task.done(), f"the operator stopped on its own: {task.exception() if task.done() else ''}"
        await settle(cluster)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def settle(cluster: Cluster, *, quiet: float = 2 * TICK, limit: float = 5.0) -> None:
    """Wait until no Pipeline has been written for `quiet` seconds. A write while kopf stops wakes a
    handler that restarts the reconcile timer, and kopf then waits 5 s for that stray timer."""
    loop = asyncio.get_running_loop()

    def writes() -> int:
        return sum(len(obj.history) for (res, _, _), obj in cluster.objects.items() if res == kmock.resource(PIPELINES))

    last, since, deadline = writes(), loop.time(), loop.time() + limit
    while loop.time() - since < quiet and loop.time() < deadline:
        await asyncio.sleep(0.05)
        if (now := writes()) != last:
            last, since = now, loop.time()


def child_writes(cluster: Cluster) -> list[kmock.Request]:
    """The operator's requests that change a Deployment, ScaledObject or Topic, in order."""
    return [r for r in cluster if r.resource in CHILDREN and r.method != kmock.method.GET
            and not r.headers.get("User-Agent", "").startswith("kmock/")]


def is_forced_apply(request: kmock.Request) -> bool:
    return (_is_apply(request) and request.params.get("fieldManager") == OPERATOR
            and request.params.get("force") == "true")


async def mark_ready(op: Operator, deployment: str, ready: int) -> None:
    """Play the Deployment controller: report `ready` ready replicas."""
    await op.patch(path(DEPLOYMENTS, deployment, "status"), {"status": {"readyReplicas": ready}})


async def test_create_builds_owned_children_and_reports_ready(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        created = await operator.apply(pipeline())
        uid = created["metadata"]["uid"]

        children = [(DEPLOYMENTS, "docs-extractor"), (DEPLOYMENTS, "docs-notifier"),
                    (SCALED_OBJECTS, "docs-extractor"), (SCALED_OBJECTS, "docs-notifier"),
                    (TOPICS, "docs-extractor"), (TOPICS, "docs-extractor-dlq"),
                    (TOPICS, "docs-notifier"), (TOPICS, "docs-notifier-dlq")]
        await eventually(lambda: all(operator.get(r, n) for r, n in children), "every child to exist")
        for resource, name in children:
            refs = operator.get(resource, name)["metadata"]["ownerReferences"]
            assert refs == [{"apiVersion": "conveyor.dev/v1alpha1", "kind": "Pipeline", "name": "docs", "uid": uid,
                             "controller": True, "blockOwnerDeletion": True}], (resource, name)
        assert operator.get(TOPICS, "docs-notifier")["spec"]["overwriteTopicName"] == "conveyor.notify"
        assert operator.get(SCALED_OBJECTS, "docs-notifier")["spec"]["triggers"][0]["metadata"]["consumerGroup"] == (
            "conveyor-notifier")

        # Every child was created by a server-side apply as the operator's field manager.
        writes = child_writes(operator.cluster)
        assert len(writes) == len(children) and all(is_forced_apply(r) for r in writes), writes

        # The applied Deployments carry no replica count: the API server's default of one stands
        # until KEDA scales, and the operator owns no part of it.
        for name in ("docs-extractor", "docs-notifier"):
            deployment = operator.get(DEPLOYMENTS, name)
            assert deployment["spec"]["replicas"] == 1
            assert ("spec", "replicas") not in ssa.owned_by(deployment, OPERATOR)
            assert ("spec", "template", "spec", "containers") in ssa.owned_by(deployment, OPERATOR)

        body = await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs")["status"].get(
            "phase") == "Progressing" else None, "phase Progressing")
        assert body["status"]["readyStages"] == "0/2"
        assert "extractor (0/1 ready), notifier (0/1 ready)" in condition(body, "Ready")["message"]
        assert "conveyor.dev/topics" in body["metadata"]["finalizers"]

        # KEDA scales the idle extractor to zero (minReplicas 0); the notifier's worker gets ready.
        await operator.scale("docs-extractor", 0)
        await mark_ready(operator, "docs-notifier", 1)
        body = await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs")["status"].get(
            "phase") == "Ready" else None, "phase Ready after the notifier became ready")
        status = body["status"]
        assert (status["readyStages"], status["totalLag"], status["observedGeneration"]) == ("2/2", 7, 1)
        assert [(s["name"], s["lag"], s["partitions"], s["ready"]) for s in status["stages"]] == [
            ("extractor", 5, 6, True), ("notifier", 2, 3, True)]
        ready = condition(body, "Ready")
        assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "AllStagesReady", 1)
        assert condition(body, "Degraded")["status"] == "False"


async def test_the_embedder_example_becomes_four_chained_stages(cluster: Cluster) -> None:
    """k8s/examples/pipeline-with-embedder.yaml, as kubectl would apply it: one Deployment,
    ScaledObject and pair of Redpanda Topics per stage, each stage reading what the one before writes."""
    example = yaml.safe_load((Path(__file__).resolve().parents[1] / "k8s/examples/pipeline-with-embedder.yaml").read_text())
    example["metadata"]["namespace"] = NS
    async with running_operator(cluster) as operator:
        await operator.apply(example)
        stages = ["extractor", "embedder", "summarizer", "notifier"]
        names = [f"documents-embedded-{stage}" for stage in stages]
        await eventually(lambda: all(operator.get(DEPLOYMENTS, n) and operator.get(SCALED_OBJECTS, n)
                                     and operator.get(TOPICS, n) and operator.get(TOPICS, f"{n}-dlq") for n in names),
                         "every stage's children to exist")
        bindings = []
        for name in names:
            (container,) = operator.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            bindings.append((env["CONVEYOR_INPUT_TOPIC"], env.get("CONVEYOR_OUTPUT_TOPIC"), env.get("CONVEYOR_NEXT_STAGE"),
                             env["CONVEYOR_PIPELINE_STAGES"]))
        assert operator.get(DEPLOYMENTS, names[1])["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "conveyor-embedder:0.1.0"
    topics = ["conveyor.extract", "conveyor.embedder", "conveyor.summarize", "conveyor.notify"]
    assert [b[0] for b in bindings] == topics
    assert [(b[1], b[2]) for b in bindings] == [(topics[1], "embedder"), (topics[2], "summarizer"),
                                                 (topics[3], "notifier"), ("", "")]  # the last stage
    assert {b[3] for b in bindings} == {",".join(stages)}


async def test_update_patches_only_what_changed(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline())
        await eventually(lambda: operator.pipeline("docs")["status"]["observedGeneration"] == 1, "first reconcile")
        await asyncio.sleep(TICK * 2)  # let the timer run: in-shape children must get no writes
        untouched = [(DEPLOYMENTS, "docs-extractor"), (SCALED_OBJECTS, "docs-extractor"),
                     (SCALED_OBJECTS, "docs-notifier"), (TOPICS, "docs-extractor"), (TOPICS, "docs-extractor-dlq")]
        before = {child: operator.cluster.versions(*child) for child in untouched}
        assert all(count == 1 for count in before.values()), before  # created once, never patched

        stages = pipeline()["spec"]["stages"]
        stages[1] |= {"image": "conveyor:0.2.0", "partitions": 4}
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"stages": stages}})

        def updated() -> bool:
            container = operator.get(DEPLOYMENTS, "docs-notifier")["spec"]["template"]["spec"]["containers"][0]
            return (container["image"] == "conveyor:0.2.0"
                    and operator.get(TOPICS, "docs-notifier")["spec"]["partitions"] == 4
                    and operator.pipeline("docs")["status"]["observedGeneration"] == 2)
        await eventually(updated, "the notifier's Deployment and Topic to follow the spec")
        await asyncio.sleep(TICK * 2)
        assert {child: operator.cluster.versions(*child) for child in untouched} == before
        assert operator.cluster.versions(DEPLOYMENTS, "docs-notifier") == 2  # created, then applied once
        assert operator.cluster.versions(TOPICS, "docs-notifier-dlq") == 2
        assert all(is_forced_apply(r) for r in child_writes(operator.cluster))

        # Partitions only grow: a decrease is refused, reported, and not applied.
        stages[0]["partitions"] = 2
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"stages": stages}})
        body = await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs")["status"].get(
            "phase") == "Degraded" else None, "phase Degraded")
        degraded = condition(body, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "PartitionDecreaseRefused")
        assert "topic conveyor.extract has 6 partitions" in degraded["message"]
        assert "spec.stages[0].partitions asks for 2" in degraded["message"]
        assert operator.get(TOPICS, "docs-extractor")["spec"]["partitions"] == 6

        # A stage removed from the spec loses its workers and scaler; its topics stay.
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"stages": stages[:1]}})
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-notifier") is None
                         and operator.get(SCALED_OBJECTS, "docs-notifier") is None, "the notifier to be pruned")
        assert operator.get(TOPICS, "docs-notifier") is not None
        status = (await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs")["status"][
            "observedGeneration"] == 4 else None, "the status of the last generation"))["status"]
        # No KEDA here: the extractor keeps the Deployment's default of one replica, not ready.
        assert ([s["name"] for s in status["stages"]], status["readyStages"], status["totalLag"]) == (
            ["extractor"], "0/1", 5)


async def test_timer_repairs_drift(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline())
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-extractor"), "the extractor Deployment")
        uid = operator.pipeline("docs")["metadata"]["uid"]

        await operator.delete(path(DEPLOYMENTS, "docs-extractor"))
        assert operator.get(DEPLOYMENTS, "docs-extractor") is None
        restored = await eventually(lambda: operator.get(DEPLOYMENTS, "docs-extractor"), "the Deployment to come back")
        assert restored["metadata"]["ownerReferences"][0]["uid"] == uid

        # The edit moves the field to kubectl's manager; the forced apply takes it back.
        await operator.patch(path(SCALED_OBJECTS, "docs-notifier"), {"spec": {"maxReplicaCount": 50}},
                             manager="kubectl-edit")
        assert ("spec", "maxReplicaCount") in ssa.owned_by(operator.get(SCALED_OBJECTS, "docs-notifier"),
                                                           "kubectl-edit")
        await eventually(lambda: operator.get(SCALED_OBJECTS, "docs-notifier")["spec"]["maxReplicaCount"] == 3,
                         "the edited ScaledObject to be put back")
        scaled_object = operator.get(SCALED_OBJECTS, "docs-notifier")
        assert ("spec", "maxReplicaCount") in ssa.owned_by(scaled_object, OPERATOR)
        assert ("spec", "maxReplicaCount") not in ssa.owned_by(scaled_object, "kubectl-edit")
        assert all(is_forced_apply(r) for r in child_writes(operator.cluster) if r.method != kmock.method.DELETE)


async def test_keda_keeps_its_replica_count_and_fields_no_longer_applied_go(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        body = pipeline()
        body["spec"]["kafka"]["replicationFactor"] = 3
        await operator.apply(body)
        topics = ["docs-extractor", "docs-extractor-dlq", "docs-notifier", "docs-notifier-dlq"]
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-notifier") and len(
            operator.cluster.names(TOPICS)) == 4, "the children")
        assert all(operator.get(TOPICS, name)["spec"]["replicationFactor"] == 3 for name in topics)

        await operator.scale("docs-notifier", 3)  # KEDA scales on lag
        await operator.patch(path(DEPLOYMENTS, "docs-notifier"), {"metadata": {"annotations": {"team": "docs"}}},
                             manager="kubectl-annotate")
        await asyncio.sleep(TICK * 3)  # timer reconciles: the Deployment is in shape
        assert operator.get(DEPLOYMENTS, "docs-notifier")["spec"]["replicas"] == 3

        # A new image is applied to the Deployment, which keeps KEDA's count and the annotation
        # another manager set; the replication factor the spec no longer names leaves every Topic.
        stages = body["spec"]["stages"]
        stages[1]["image"] = "conveyor:0.2.0"
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"kafka": {"replicationFactor": None},
                                                                "stages": stages}})
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-notifier")["spec"]["template"]["spec"][
            "containers"][0]["image"] == "conveyor:0.2.0", "the new image")
        await eventually(lambda: all("replicationFactor" not in operator.get(TOPICS, name)["spec"]
                                     for name in topics), "the replication factor to be removed")
        await asyncio.sleep(TICK * 3)
        deployment = operator.get(DEPLOYMENTS, "docs-notifier")
        assert deployment["spec"]["replicas"] == 3
        assert deployment["metadata"]["annotations"]["team"] == "docs"
        assert ssa.owned_by(deployment, KEDA) == {("spec", "replicas")}
        assert ("spec", "replicas") not in ssa.owned_by(deployment, OPERATOR)
        assert all(is_forced_apply(r) for r in child_writes(operator.cluster))


def test_the_emulated_apply_follows_field_ownership() -> None:
    """What the kmock tests rely on from tests/server_side_apply.py, checked on its own."""
    config = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": NS},
              "spec": {"paused": False, "minReadySeconds": 5}}
    created = ssa.apply(None, config, OPERATOR, force=False)
    edited = copy.deepcopy(created)
    edited["spec"]["minReadySeconds"] = 9
    edited["metadata"]["managedFields"] = ssa.update(created, {"spec": {"minReadySeconds": 9}}, "kubectl-edit")
    with pytest.raises(ssa.Conflict, match='conflict with "kubectl-edit": .spec.minReadySeconds'):
        ssa.apply(edited, config, OPERATOR, force=False)
    forced = ssa.apply(edited, config, OPERATOR, force=True)
    assert forced["spec"]["minReadySeconds"] == 5 and ssa.owned_by(forced, "kubectl-edit") == set()
    shorter = copy.deepcopy(config)
    del shorter["spec"]["paused"]
    assert ssa.apply(forced, shorter, OPERATOR, force=True)["spec"] == {"minReadySeconds": 5}
    assert ssa.apply(forced, config, OPERATOR, force=True) == forced  # nothing new: the same object


async def test_a_rotated_token_is_read_again_on_401(cluster: Cluster) -> None:
    """The API client logs in again as kopf does (here: the kubeconfig's new token) and goes on."""
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline())
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-extractor"), "the extractor Deployment")

        kubeconfig = Path(os.environ["KUBECONFIG"])
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"]["token"] = cluster.token = "rotated-token"
        kubeconfig.write_text(yaml.safe_dump(config))
        await operator.delete(path(DEPLOYMENTS, "docs-extractor"))
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-extractor"), "the Deployment to come back")
        restored = [r for r in child_writes(cluster) if r.name == "docs-extractor" and _is_apply(r)][-1]
        assert restored.headers["Authorization"] == "Bearer rotated-token"


async def test_invalid_spec_sets_a_condition_without_retrying(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        bad = pipeline(stages=[{"name": "extractor", "image": "conveyor:0.1.0", "partitions": 4, "maxReplicas": 8}])
        await operator.apply(bad)
        body = await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs").get("status", {}).get(
            "phase") == "Invalid" else None, "phase Invalid")
        ready = condition(body, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        assert "spec.stages[0].maxReplicas: 8 exceeds spec.stages[0].partitions (4)" in ready["message"]
        assert condition(body, "Degraded")["status"] == "True"

        await asyncio.sleep(TICK * 4)  # several timer runs: no children, no status churn, no retries
        assert operator.cluster.names(DEPLOYMENTS) == [] and operator.cluster.names(TOPICS) == []
        assert operator.cluster.status_writes(PIPELINES, "docs") == 1
        assert not operator.task.done()

        fixed = bad["spec"]["stages"]
        fixed[0]["maxReplicas"] = 4
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"stages": fixed}})
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-extractor"), "the Deployment once fixed")
        await operator.scale("docs-extractor", 0)  # KEDA: the stage is idle
        await eventually(lambda: operator.pipeline("docs")["status"]["phase"] == "Ready", "phase Ready once fixed")
        assert operator.get(SCALED_OBJECTS, "docs-extractor")["spec"]["maxReplicaCount"] == 4


@pytest.mark.parametrize("delete_topics", [False, True], ids=["keep-topics", "delete-topics"])
async def test_deleting_a_redpanda_pipeline(cluster: Cluster, delete_topics: bool) -> None:
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline(delete_topics=delete_topics))
        topics = ["docs-extractor", "docs-extractor-dlq", "docs-notifier", "docs-notifier-dlq"]
        await eventually(lambda: operator.cluster.names(TOPICS) == topics, "the Topic resources")
        await eventually(lambda: "conveyor.dev/topics" in operator.pipeline("docs")["metadata"]["finalizers"],
                         "the finalizer")

        await operator.delete(path(PIPELINES, "docs"))
        await eventually(lambda: operator.pipeline("docs") is None, "the finalizer to release the Pipeline")
        if delete_topics:
            assert operator.cluster.names(TOPICS) == []
        else:
            assert operator.cluster.names(TOPICS) == topics
            for name in topics:  # released, so garbage collection leaves them (and their data) alone
                assert "ownerReferences" not in operator.get(TOPICS, name)["metadata"]


async def test_deleting_an_external_pipeline_deletes_its_topics_through_kafka(cluster: Cluster) -> None:
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline(mode="external", delete_topics=True))
        await eventually(lambda: operator.kafka.ensured, "topics to be ensured")
        assert [(t.name, t.partitions) for t in operator.kafka.ensured[0]] == [
            ("conveyor.extract", 6), ("conveyor.extract.dlq", 6), ("conveyor.notify", 3), ("conveyor.notify.dlq", 3)]
        assert operator.cluster.names(TOPICS) == []  # external mode writes no Topic resources

        await operator.delete(path(PIPELINES, "docs"))
        await eventually(lambda: operator.pipeline("docs") is None, "the Pipeline to go")
        # kopf may run a finalizer more than once (at-least-once), so deleting is idempotent.
        assert sorted(set(operator.kafka.deleted)) == [
            "conveyor.extract", "conveyor.extract.dlq", "conveyor.notify", "conveyor.notify.dlq"]


async def test_a_missing_keda_is_reported_and_the_rest_applied(cluster: Cluster) -> None:
    del cluster.resources[SCALED_OBJECTS]
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline())
        body = await eventually(lambda: operator.pipeline("docs") if operator.pipeline("docs").get(
            "status", {}).get("phase") == "Degraded" else None, "phase Degraded")
        degraded = condition(body, "Degraded")
        assert (degraded["reason"], degraded["message"]) == (
            "KedaNotInstalled", "the API server does not serve scaledobjects.keda.sh/v1alpha1; install KEDA")
        assert operator.cluster.names(DEPLOYMENTS) == ["docs-extractor", "docs-notifier"]
        assert len(operator.cluster.names(TOPICS)) == 4


def _verbs(request: kmock.Request) -> set[str]:
    if _is_apply(request):
        return {"patch", "create"}  # an apply that creates the object needs create as well
    if request.action == kmock.action.UPDATE:
        return {"patch" if request.method == kmock.method.PATCH else "update"}
    return {{kmock.action.FETCH: "get", kmock.action.LIST: "list", kmock.action.WATCH: "watch",
             kmock.action.CREATE: "create", kmock.action.DELETE: "delete"}[request.action]}


async def test_the_operator_needs_no_more_than_the_chart_role(cluster: Cluster) -> None:
    """Every API call the operator makes through create, drift repair, update and deletion is
    allowed by the Role the chart grants it."""
    from test_operator_builders import operator_objects, render_chart

    role = operator_objects(render_chart({"operator": {"enabled": True}}))["Role"]
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    async with running_operator(cluster) as operator:
        await operator.apply(pipeline(delete_topics=True))
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-notifier"), "the notifier Deployment")
        await operator.delete(path(DEPLOYMENTS, "docs-notifier"))
        await eventually(lambda: operator.get(DEPLOYMENTS, "docs-notifier"), "the Deployment to come back")
        await operator.patch(path(PIPELINES, "docs"), {"spec": {"stages": pipeline()["spec"]["stages"][:1]}})
        await eventually(lambda: operator.get(SCALED_OBJECTS, "docs-notifier") is None, "the notifier pruned")
        await operator.delete(path(PIPELINES, "docs"))
        await eventually(lambda: operator.pipeline("docs") is None, "the Pipeline to go")

    used = {(r.resource.group, r.resource.plural + (f"/{r.subresource}" if r.subresource else ""), verb)
            for r in cluster
            if r.resource is not None and r.resource.plural and r.action is not None
            and not r.headers.get("User-Agent", "").startswith("kmock/")  # the test's own calls
            for verb in _verbs(r)}
    assert {("apps", "deployments", "create"), ("apps", "deployments", "delete"), ("conveyor.dev", "pipelines", "watch"),
            ("conveyor.dev", "pipelines/status", "patch"), ("cluster.redpanda.com", "topics", "delete")} <= used
    assert used - allowed == set(), f"calls the Role does not allow: {sorted(used - allowed)}"

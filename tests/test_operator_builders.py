"""The Pipeline CRD, its examples and the objects the operator builds, validated offline.

Deployments: kubernetes-validate (strict, Kubernetes 1.30). ScaledObject and Topic: jsonschema
against the upstream CRDs in shared/schemas/crds, made strict like the API server's field
validation (`additionalProperties: false` wherever unknown fields are not preserved).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conveyor.operator.applying import CONFIG_HASH_ANNOTATION, in_shape, matches, with_config_hash
from conveyor.operator.builders import (
    Owner,
    build_children,
    build_deployment,
    build_scaled_object,
    build_topics,
)
from conveyor.pipeline import SpecError, parse_spec
from conveyor.operator.status import Problem, StageObservation, build_status, invalid_status

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "tests/data/crds"  # upstream CRDs, with their source in the README there
CRD_SOURCE = ROOT / "services/operator/crd.yaml"
CRD_COPIES = [ROOT / "charts/conveyor/crds/pipelines.conveyor.dev.yaml", ROOT / "k8s/crds/pipelines.conveyor.dev.yaml"]
EXAMPLES = [ROOT / "k8s/examples/pipeline.yaml", ROOT / "k8s/examples/pipeline-with-embedder.yaml",
            ROOT / "k8s/examples/pipeline-extract-notify.yaml"]
K8S_VERSION = "1.30"
OWNER = Owner(name="documents", namespace="media", uid="0b6a8f7e-3c1d-4e55-9a0b-1f2e3d4c5b6a")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def strict(schema: Any) -> Any:
    """Reject unknown fields wherever the schema lists properties and does not preserve unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if ("properties" in result and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    return result


def crd_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    return strict(served[version]["schema"]["openAPIV3Schema"])


def validator(path: Path, version: str) -> jsonschema.Validator:
    schema = crd_schema(path, version)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def errors(v: jsonschema.Validator, obj: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(obj)]


def example(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def pipeline_schema() -> jsonschema.Validator:
    return validator(CRD_SOURCE, "v1alpha1")


@pytest.fixture(scope="module")
def keda() -> jsonschema.Validator:
    return validator(SCHEMAS / "keda.sh_scaledobjects.yaml", "v1alpha1")


@pytest.fixture(scope="module")
def redpanda() -> jsonschema.Validator:
    return validator(SCHEMAS / "cluster.redpanda.com_topics.yaml", "v1alpha2")


# --- the CRD ---------------------------------------------------------------------------------------

def test_crd_copies_are_identical_to_the_source() -> None:
    source = CRD_SOURCE.read_bytes()
    for copy_path in CRD_COPIES:
        assert copy_path.read_bytes() == source, f"{copy_path} differs from {CRD_SOURCE}; copy it again"


def test_crd_is_a_valid_custom_resource_definition() -> None:
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    assert kubernetes_validate.validate(crd, K8S_VERSION, strict=True) == K8S_VERSION
    assert crd["metadata"]["name"] == "pipelines.conveyor.dev"
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "conveyor.dev", "Pipeline", "pipelines", ["cpl"])
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Ready stages", "Total lag", "Age"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(path: Path, pipeline_schema: jsonschema.Validator) -> None:
    obj = example(path)
    assert obj["apiVersion"] == "conveyor.dev/v1alpha1" and obj["kind"] == "Pipeline"
    assert errors(pipeline_schema, obj) == []


def test_crd_schema_rejects_what_the_api_server_would(pipeline_schema: jsonschema.Validator) -> None:
    obj = example(EXAMPLES[0])
    bad = copy.deepcopy(obj)
    bad["spec"]["stages"][0]["replicas"] = 3  # unknown field
    bad["spec"]["kafka"]["mode"] = "kraft"  # not in the enum
    bad["spec"]["stages"][1]["name"] = "Summarizer"  # not a DNS label
    found = "\n".join(errors(pipeline_schema, bad))
    assert "replicas" in found and "kraft" in found and "Summarizer" in found
    empty = copy.deepcopy(obj)
    empty["spec"]["stages"] = []
    assert any("spec/stages" in e for e in errors(pipeline_schema, empty))


# --- the spec --------------------------------------------------------------------------------------

def test_default_example_resolves_the_shared_topic_names() -> None:
    spec = parse_spec(example(EXAMPLES[0])["spec"])
    assert [(s.name, spec.input_topic(s), spec.dlq_topic(s), spec.consumer_group(s)) for s in spec.stages] == [
        ("extractor", "conveyor.extract", "conveyor.extract.dlq", "conveyor-extractor"),
        ("summarizer", "conveyor.summarize", "conveyor.summarize.dlq", "conveyor-summarizer"),
        ("notifier", "conveyor.notify", "conveyor.notify.dlq", "conveyor-notifier"),
    ]


def test_extra_stage_gets_prefix_dot_name_and_its_own_command() -> None:
    spec = parse_spec(example(EXAMPLES[1])["spec"])
    embedder = spec.stage("embedder")
    assert spec.input_topic(embedder) == "conveyor.embedder"
    assert spec.consumer_group(embedder) == "conveyor-embedder"
    assert embedder.container_command() == (["conveyor-embedder"], [])
    assert spec.stage("extractor").replicas_ceiling == 6
    custom = parse_spec({**example(EXAMPLES[0])["spec"], "stages": [
        {"name": "redactor", "image": "acme/redactor:1", "handler": "acme.redact:handle"}]})
    assert custom.stages[0].container_command() == (["conveyor-stage", "redactor", "acme.redact:handle"], [])


def _rendered_bindings(path: Path) -> dict[str, dict[str, str]]:
    """Each stage's bindings as its rendered Deployment's container gets them."""
    spec = parse_spec(example(path)["spec"])
    found = {}
    for stage in spec.stages:
        container = build_deployment(spec, stage, OWNER)["spec"]["template"]["spec"]["containers"][0]
        found[stage.name] = {e["name"]: e.get("value") for e in container["env"]}
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_rendered_bindings_chain_each_stage_to_the_next_with_no_gap(path: Path) -> None:
    env = _rendered_bindings(path)
    readers = {e["CONVEYOR_INPUT_TOPIC"]: name for name, e in env.items()}
    first = next(iter(env))
    walked, stage = [first], first
    while env[stage]["CONVEYOR_OUTPUT_TOPIC"]:
        following = readers[env[stage]["CONVEYOR_OUTPUT_TOPIC"]]  # a KeyError is a gap: nobody reads it
        assert env[stage]["CONVEYOR_NEXT_STAGE"] == following
        walked.append(stage := following)
    assert walked == list(env), "every stage is on the one path, in the order listed"
    assert {e["CONVEYOR_PIPELINE_STAGES"] for e in env.values()} == {",".join(env)}
    assert all(e["CONVEYOR_NOTIFY_TOPIC"] == ("" if name == "notifier" else "conveyor.notify")
               for name, e in env.items())


def test_the_embedder_pipeline_runs_extract_embed_summarize_notify() -> None:
    env = _rendered_bindings(EXAMPLES[1])
    assert [(name, e["CONVEYOR_OUTPUT_TOPIC"]) for name, e in env.items()] == [
        ("extractor", "conveyor.embedder"), ("embedder", "conveyor.summarize"),
        ("summarizer", "conveyor.notify"), ("notifier", "")]


def test_an_output_topic_must_be_a_later_stages_input() -> None:
    raw = example(EXAMPLES[0])["spec"]
    raw["stages"][0]["outputTopic"] = "conveyor.notify"  # skips the summarizer
    skipping = parse_spec(raw)
    assert skipping.following(skipping.stages[0]).name == "notifier"
    raw["stages"][2]["outputTopic"] = "conveyor.extract"
    with pytest.raises(SpecError, match=r"spec.stages\[2\].outputTopic: 'conveyor.extract' is not the input of a later stage"):
        parse_spec(raw)


def test_max_replicas_above_partitions_is_rejected_naming_the_field() -> None:
    raw = example(EXAMPLES[0])["spec"]
    raw["stages"][1]["partitions"] = 4
    raw["stages"][1]["maxReplicas"] = 8
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    message = str(caught.value)
    assert "spec.stages[1].maxReplicas: 8 exceeds spec.stages[1].partitions (4)" in message
    assert "'summarizer'" in message


def test_every_problem_is_reported_with_its_field() -> None:
    raw = example(EXAMPLES[1])["spec"]
    del raw["kafka"]["clusterRef"]
    raw["stages"][2]["name"] = "extractor"
    raw["stages"][0]["replicas"] = 2
    raw["stages"][3]["minReplicas"] = -1
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    problems = caught.value.problems
    assert any(p.startswith("spec.stages[0].replicas:") for p in problems)
    assert any(p.startswith("spec.stages[3].minReplicas:") for p in problems)
    raw["stages"][0].pop("replicas")
    raw["stages"][3]["minReplicas"] = 0
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    problems = caught.value.problems
    assert any(p.startswith("spec.kafka.clusterRef: required when spec.kafka.mode is redpanda") for p in problems)
    assert any(p.startswith("spec.stages[2].name: stage 'extractor' is already defined at spec.stages[0]")
               for p in problems)


# --- the objects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_built_objects_validate(path: Path, keda: jsonschema.Validator, redpanda: jsonschema.Validator) -> None:
    spec = parse_spec(example(path)["spec"])
    children = build_children(spec, OWNER)
    kinds = [c["kind"] for c in children]
    topics = 2 * len(spec.stages) if spec.kafka.mode == "redpanda" else 0
    assert kinds == ["Topic"] * topics + ["Deployment"] * len(spec.stages) + ["ScaledObject"] * len(spec.stages)
    for child in children:
        meta = child["metadata"]
        assert DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253
        assert meta["namespace"] == OWNER.namespace
        assert meta["ownerReferences"] == [{
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Pipeline", "name": "documents",
            "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["conveyor.dev/pipeline"] == "documents"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "conveyor-operator"
        if child["kind"] == "Deployment":
            assert kubernetes_validate.validate(child, K8S_VERSION, strict=True) == K8S_VERSION
        elif child["kind"] == "ScaledObject":
            assert errors(keda, child) == []
        else:
            assert errors(redpanda, child) == []


def test_deployment_runs_the_stage_worker_with_its_bindings() -> None:
    raw = example(EXAMPLES[1])["spec"]
    (stage,) = [s for s in raw["stages"] if s["name"] == "summarizer"]
    stage["summarizer"] = {"backend": "openai", "openaiBaseUrl": "http://vllm.llm.svc.cluster.local:8000/v1",
                           "openaiModel": "Qwen/Qwen2.5-7B-Instruct"}
    stage["env"] = [{"name": "CONVEYOR_OPENAI_API_KEY",
                     "valueFrom": {"secretKeyRef": {"name": "conveyor-openai", "key": "api-key"}}}]
    spec = parse_spec(raw)
    summarizer = spec.stage("summarizer")
    deployment = build_deployment(spec, summarizer, OWNER)
    pod = deployment["spec"]["template"]
    assert deployment["metadata"]["name"] == "documents-summarizer"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert (container["command"], container["args"]) == (["conveyor-summarizer"], [])
    env = {e["name"]: e for e in container["env"]}
    assert env["CONVEYOR_BOOTSTRAP_SERVERS"]["value"] == "redpanda.conveyor.svc.cluster.local:9093"
    assert env["CONVEYOR_TOPIC_PREFIX"]["value"] == "conveyor"
    assert env["CONVEYOR_INPUT_TOPIC"]["value"] == "conveyor.summarize"
    assert env["CONVEYOR_SUMMARIZER_BACKEND"]["value"] == "openai"
    assert env["CONVEYOR_OPENAI_BASE_URL"]["value"] == "http://vllm.llm.svc.cluster.local:8000/v1"
    assert env["CONVEYOR_OPENAI_MODEL"]["value"] == "Qwen/Qwen2.5-7B-Instruct"
    assert env["CONVEYOR_OPENAI_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "conveyor-openai", "key": "api-key"}}
    assert len(env) == len(container["env"]), "an env var is set twice"


def test_user_env_overrides_the_generated_value() -> None:
    raw = example(EXAMPLES[0])["spec"]
    raw["stages"][0]["env"] = [{"name": "CONVEYOR_METRICS_PORT", "value": "9200"}]
    spec = parse_spec(raw)
    env = build_deployment(spec, spec.stages[0], OWNER)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "CONVEYOR_METRICS_PORT"] == ["9200"]


def test_scaled_object_scales_on_the_stage_consumer_group() -> None:
    spec = parse_spec(example(EXAMPLES[0])["spec"])
    notifier = spec.stage("notifier")
    scaled = build_scaled_object(spec, notifier, OWNER)
    assert scaled["spec"]["scaleTargetRef"]["name"] == "documents-notifier"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 3)
    assert scaled["spec"]["triggers"] == [{"type": "kafka", "name": "notifier-lag", "metadata": {
        "bootstrapServers": "redpanda.conveyor.svc.cluster.local:9093",
        "consumerGroup": "conveyor-notifier",
        "topic": "conveyor.notify",
        "lagThreshold": "50",
        "activationLagThreshold": "0",
        "offsetResetPolicy": "earliest",
        "allowIdleConsumers": "false",
        "excludePersistentLag": "true",
    }}]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_scaled_objects_exclude_persistent_lag(path: Path, keda: jsonschema.Validator) -> None:
    """A stage waiting out an outage holds its offsets; KEDA must not scale it up for that lag."""
    spec = parse_spec(example(path)["spec"])
    for stage in spec.stages:
        scaled = build_scaled_object(spec, stage, OWNER)
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["excludePersistentLag"] == "true", stage.name
        assert errors(keda, scaled) == [], stage.name


def test_redpanda_topics_name_the_real_topic_and_cluster() -> None:
    spec = parse_spec(example(EXAMPLES[1])["spec"])
    topics = build_topics(spec, spec.stage("embedder"), OWNER)
    assert [(t["metadata"]["name"], t["spec"]["overwriteTopicName"], t["spec"]["partitions"]) for t in topics] == [
        ("documents-embedder", "conveyor.embedder", 4), ("documents-embedder-dlq", "conveyor.embedder.dlq", 4)]
    assert all(t["spec"]["cluster"] == {"clusterRef": {"name": "redpanda", "namespace": "conveyor"}} for t in topics)
    assert all(t["spec"]["replicationFactor"] == 1 for t in topics)


# --- patching only what differs --------------------------------------------------------------------

def _as_server_returns(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with fields an API server adds: defaults, normalized quantities, status, KEDA's replicas."""
    served = copy.deepcopy(obj)
    served["metadata"] |= {"uid": "1", "resourceVersion": "7", "generation": 3}
    served["metadata"]["labels"]["team"] = "docs"
    spec = served["spec"]
    spec |= {"replicas": 5, "progressDeadlineSeconds": 600,
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}
    container = spec["template"]["spec"]["containers"][0]
    container |= {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log"}
    container["resources"] = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    container["readinessProbe"]["successThreshold"] = 1
    container["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
    served["status"] = {"readyReplicas": 5}
    return served


def test_an_object_in_shape_needs_no_apply() -> None:
    raw = example(EXAMPLES[0])["spec"]
    raw["stages"][1]["resources"]["requests"]["cpu"] = "0.5"  # the server answers "500m"
    spec = parse_spec(raw)
    applied = with_config_hash(build_deployment(spec, spec.stage("summarizer"), OWNER))
    assert in_shape(applied, _as_server_returns(applied))


def test_the_applied_deployment_leaves_replicas_to_keda() -> None:
    spec = parse_spec(example(EXAMPLES[0])["spec"])
    assert all("replicas" not in build_deployment(spec, stage, OWNER)["spec"] for stage in spec.stages)


def test_drift_or_a_changed_config_needs_an_apply() -> None:
    spec = parse_spec(example(EXAMPLES[0])["spec"])
    desired = build_deployment(spec, spec.stage("summarizer"), OWNER)
    applied = with_config_hash(desired)
    served = _as_server_returns(applied)
    served["metadata"]["ownerReferences"].insert(0, {"apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                                                     "uid": "other"})
    assert in_shape(applied, served), "another owner's reference beside ours is fine"

    drifted = copy.deepcopy(served)
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = "conveyor:0.0.9"
    assert not in_shape(applied, drifted)

    # A field the operator stops setting is still on the server, so only the hash tells it apart.
    shorter = copy.deepcopy(desired)
    del shorter["spec"]["template"]["spec"]["containers"][0]["resources"]
    shorter = with_config_hash(shorter)
    assert shorter["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != (
        applied["metadata"]["annotations"][CONFIG_HASH_ANNOTATION])
    assert not in_shape(shorter, served)
    assert not matches({"cpu": "1"}, {"cpu": "999m"}, quantities=True)


# --- status ----------------------------------------------------------------------------------------

def _stage(name: str, *, replicas: int, ready: int, lag: int | None) -> StageObservation:
    return StageObservation(name=name, input_topic=f"t.{name}", consumer_group=f"g-{name}", partitions=6,
                            replicas=replicas, ready_replicas=ready, deployed=True, lag=lag)


def test_status_phases_and_transition_times() -> None:
    stages = [_stage("a", replicas=0, ready=0, lag=4), _stage("b", replicas=2, ready=1, lag=3)]
    first = build_status(generation=2, stages=stages, problems=[], previous=None, at="2030-01-01T00:00:00Z")
    assert (first["phase"], first["readyStages"], first["totalLag"]) == ("Progressing", "1/2", 7)
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "StagesNotReady", 2)
    assert "b (1/2 ready)" in ready["message"]

    stages[1] = _stage("b", replicas=2, ready=2, lag=None)
    second = build_status(generation=2, stages=stages, problems=[], previous=first, at="2030-01-01T00:01:00Z")
    assert (second["phase"], second["readyStages"], second["totalLag"]) == ("Ready", "2/2", None)
    by_type = {c["type"]: c for c in second["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "2030-01-01T00:01:00Z"  # flipped
    assert by_type["Degraded"]["lastTransitionTime"] == "2030-01-01T00:00:00Z"  # did not

    degraded = build_status(generation=3, stages=stages, problems=[Problem("PartitionDecreaseRefused", "keeps 6")],
                            previous=second)
    assert degraded["phase"] == "Degraded"
    assert {c["type"]: (c["status"], c["reason"]) for c in degraded["conditions"]} == {
        "Ready": ("False", "PartitionDecreaseRefused"), "Degraded": ("True", "PartitionDecreaseRefused")}
    invalid = invalid_status(generation=4, message="spec.stages[0].image: Field required", previous=degraded)
    assert invalid["phase"] == "Invalid"
    assert invalid["conditions"][0]["message"] == "spec.stages[0].image: Field required"


# --- the chart's operator objects ------------------------------------------------------------------

def render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    import helm_python

    with helm_python.Chart.load(ROOT / "charts/conveyor") as chart:
        rendered = chart.render(values, name="conveyor", namespace="media", is_install=True)
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def operator_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"}


def test_chart_renders_the_operator_only_when_enabled() -> None:
    assert operator_objects(render_chart({})) == {}
    objects = operator_objects(render_chart({"operator": {"enabled": True}}))
    assert sorted(objects) == ["Deployment", "Role", "RoleBinding", "ServiceAccount"]
    for obj in objects.values():
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION
        assert obj["metadata"]["namespace"] == "media"

    deployment = objects["Deployment"]
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]) == (1, {"type": "Recreate"})
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"] == "conveyor-operator"
    assert pod["automountServiceAccountToken"] is True
    container = pod["containers"][0]
    assert container["command"] == ["conveyor-operator"] and "args" not in container
    assert container["image"] == "conveyor-operator:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_OPERATOR_NAMESPACES"] == "media"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["health"], ports["metrics"]) == (int(env["CONVEYOR_OPERATOR_HEALTH_PORT"]),
                                                  int(env["CONVEYOR_OPERATOR_METRICS_PORT"]))

    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "conveyor-operator", "namespace": "media"}]
    assert "ClusterRole" not in objects and "ClusterRoleBinding" not in objects

"""The Helm chart, the images and the dev loop, checked without a cluster.

Helm's own Go SDK renders and lints the chart; built-in objects are validated strictly against the
Kubernetes API schemas of a pinned version; KEDA and Redpanda resources against their upstream CRDs.
Cross-checks tie the chart to the code: topic and group names come from conveyor.topics, the
ConfigMap must parse as conveyor.settings.Settings, probes must hit paths the processes serve, and
the Dockerfiles and skaffold.yaml must agree with the Deployments.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml

from conveyor import topics
from conveyor.cli.embedded_broker import free_port
from conveyor.operator.applying import quantity
from conveyor.settings import Settings
import k8s_checks as k8s

VALUE_SETS = k8s.ci_values()
WORKERS = topics.STAGES
COMPONENTS = ("gateway", *WORKERS)


@pytest.fixture(scope="module")
def rendered() -> dict[str, k8s.Manifests]:
    return {name: k8s.render(values) for name, values in VALUE_SETS.items()}


def _prefix(values: dict[str, Any]) -> str:
    return (values.get("kafka") or {}).get("topicPrefix", "conveyor")


# --------------------------------------------------------------------------- lint, schema, render


def test_value_sets_are_present() -> None:
    assert {"default", "production", "minimal", "laptop"} <= set(VALUE_SETS)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_is_clean(name: str) -> None:
    report = k8s.lint(VALUE_SETS[name])
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def test_chart_has_no_missing_dependencies() -> None:
    assert all(d["status"] == "ok" for d in helm_python.dependency_list(k8s.CHART))


def test_chart_metadata() -> None:
    with helm_python.Chart.load(k8s.CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == "0.1.0"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    manifests = rendered[name]
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount"} <= manifests.kinds()
    assert {k8s.RELEASE + "-" + c for c in COMPONENTS} == {d["metadata"]["name"] for d in manifests.of("Deployment")}
    assert "port-forward" in manifests.notes or "http" in manifests.notes


@pytest.mark.parametrize("bad, where", [
    ({"gateway": {"replicas": "three"}}, "replicas"),
    ({"gateway": {"replicas": 0}}, "replicas"),
    ({"kafka": {"topics": {"partitions": "6"}}}, "partitions"),
    ({"summarizer": {"backend": "gpt"}}, "backend"),
    ({"statusStore": {"backend": "postgres"}}, "backend"),
    ({"kafka": {"securityProtocol": "TLS"}}, "securityProtocol"),
    ({"kafka": {"topics": {"replicationFactor": 2}}}, "replicationFactor"),
    ({"extractor": {"autoscaling": {"minReplicas": -1}}}, "minReplicas"),
    ({"summarizer": {"autoscaling": {"excludePersistentLag": "true"}}}, "excludePersistentLag"),
    ({"networkPolicy": {"enabled": "yes"}}, "enabled"),
    ({"gateway": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    ({"unknownTopLevel": True}, "unknownTopLevel"),
    ({"kafka": {"topics": {"partition": 6}}}, "partition"),
    ({"gateway": {"ingress": {"enabeld": True}}}, "enabeld"),
    ({"networkPolicy": {"broker": {"to": [{"podSelectr": {}}]}}}, "podSelectr"),
    ({"statusStore": {"backend": "sqlite"}, "gateway": {"replicas": 2}}, "replicas"),
    ({"operator": {"enabled": "no"}}, "enabled"),
])
def test_schema_rejects(bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=where):
        k8s.validate_values(bad)


def test_schema_accepts_every_value_set() -> None:
    for values in VALUE_SETS.values():
        k8s.validate_values(values)


@pytest.mark.parametrize("values, message", [
    ({"extractor": {"autoscaling": {"maxReplicas": 7}}}, "extractor.autoscaling.maxReplicas"),
    ({"kafka": {"topics": {"partitions": 2}}}, "above kafka.topics.partitions"),
    ({"summarizer": {"autoscaling": {"enabled": False}, "replicas": 9}}, "summarizer.replicas"),
    ({"notifier": {"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}}, "minReplicas"),
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "secrets.saslUsername"),
    ({"kafka": {"securityProtocol": "SASL_PLAINTEXT", "topics": {"clusterRef": {"name": ""}}},
      "secrets": {"existingSecret": "creds"}}, "secrets.saslUsername"),
    ({"summarizer": {"backend": "openai"}}, "secrets.openaiApiKey"),
])
def test_template_refuses_bad_combinations(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message.replace(".", r"\.")):
        k8s.render(values)


def test_sqlite_with_several_gateways_fails_even_without_the_schema(tmp_path: Path) -> None:
    """The template refuses it too, for installs that skip schema validation."""
    chart = tmp_path / "conveyor"
    shutil.copytree(k8s.CHART, chart)
    (chart / "values.schema.json").unlink()
    with helm_python.Chart.load(chart) as unchecked:
        with pytest.raises(helm_python.HelmRenderError, match="gateway.replicas must be 1"):
            unchecked.render({"statusStore": {"backend": "sqlite"}, "gateway": {"replicas": 2}}, name="conveyor")
        unchecked.render({"statusStore": {"backend": "redis"}, "gateway": {"replicas": 2}}, name="conveyor")


# --------------------------------------------------------------------------- every object is valid


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    failures = {f"{d['kind']}/{d['metadata']['name']}": errs
                for d in rendered[name].docs if (errs := k8s.object_errors(d))}
    assert not failures, failures


def test_unknown_kinds_are_failures() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert k8s.object_errors(doc)


def test_crd_validation_is_strict() -> None:
    so = k8s.render().get("ScaledObject", "conveyor-extractor")
    assert not k8s.object_errors(so)
    typo = yaml.safe_load(yaml.safe_dump(so))
    typo["spec"]["maxReplicas"] = 3
    assert k8s.object_errors(typo)
    number = yaml.safe_load(yaml.safe_dump(so))
    number["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50  # KEDA metadata values are strings
    assert k8s.object_errors(number)
    inverted = yaml.safe_load(yaml.safe_dump(so))
    inverted["spec"]["minReplicaCount"], inverted["spec"]["maxReplicaCount"] = 5, 2
    assert k8s.object_errors(inverted)


def test_optional_objects_render_and_validate() -> None:
    values = {
        "statusStore": {"backend": "redis"}, "blobStore": {"backend": "s3"}, "gateway": {"replicas": 2},
        "kafka": {"securityProtocol": "SASL_SSL", "topics": {"clusterRef": {"name": ""}, "syncInterval": "30s"}},
        "secrets": {"saslUsername": "conveyor", "saslPassword": "pw", "openaiApiKey": "sk-test",
                    "extra": {"AWS_ACCESS_KEY_ID": "AKIA"}},
        "summarizer": {"backend": "openai"},
        # Offline, the render sees no Prometheus operator API: render its objects anyway.
        "serviceMonitor": {"enabled": True}, "monitoring": {"requireApi": False},
    }
    values["gateway"]["ingress"] = {"enabled": True, "tls": [{"secretName": "t", "hosts": ["conveyor.local"]}]}
    manifests = k8s.render(values)
    assert {"Ingress", "ServiceMonitor", "TriggerAuthentication", "PodDisruptionBudget",
            "NetworkPolicy", "Topic", "ScaledObject"} <= manifests.kinds()
    assert "PersistentVolumeClaim" not in manifests.kinds()
    failures = {f"{d['kind']}/{d['metadata']['name']}": errs for d in manifests.docs if (errs := k8s.object_errors(d))}
    assert not failures, failures
    topic = manifests.of("Topic")[0]
    assert topic["spec"]["kafkaApiSpec"]["sasl"]["password"]["secretKeyRef"]["key"] == "CONVEYOR_SASL_PASSWORD"
    assert topic["spec"]["kafkaApiSpec"]["tls"] == {"enabled": True}


# --------------------------------------------------------------------------- cross-checks


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_scaled_objects_match_deployments_and_topics(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    deployments = {d["metadata"]["name"]: d for d in manifests.of("Deployment")}
    topic_partitions = {t["spec"].get("overwriteTopicName", t["metadata"]["name"]): t["spec"]["partitions"]
                        for t in manifests.of("Topic")}
    scaled = manifests.of("ScaledObject")
    expected = {s for s in WORKERS if (values.get(s) or {}).get("autoscaling", {}).get("enabled", True)}
    assert len(scaled) == len(expected)
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments
        deployment = deployments[target["name"]]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        argv = container["command"] + container.get("args", [])
        assert len(argv) == 1 and argv[0].startswith("conveyor-"), argv
        stage = argv[0].removeprefix("conveyor-")
        env = manifests.effective_env(deployment)
        settings_prefix = env["CONVEYOR_TOPIC_PREFIX"]
        assert settings_prefix == _prefix(values)
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == topics.consumer_group(stage, settings_prefix)
        assert meta["topic"] == topics.input_topic(stage, settings_prefix)
        assert meta["bootstrapServers"] == env["CONVEYOR_BOOTSTRAP_SERVERS"]
        assert meta["offsetResetPolicy"] == "earliest"
        partitions = topic_partitions.get(meta["topic"], int(env["CONVEYOR_PARTITIONS"]))
        assert so["spec"]["maxReplicaCount"] <= partitions
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        if env["CONVEYOR_SECURITY_PROTOCOL"].startswith("SASL_"):
            auth = manifests.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
            secret_name = next(s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s)
            refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
            assert set(refs) == {"username", "password"}
            assert {r["name"] for r in refs.values()} == {secret_name}
            assert refs["username"]["key"] == "CONVEYOR_SASL_USERNAME"
            assert refs["password"]["key"] == "CONVEYOR_SASL_PASSWORD"
            assert meta["sasl"] == {"SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512",
                                    "PLAIN": "plaintext"}[env["CONVEYOR_SASL_MECHANISM"]]
        else:
            assert "authenticationRef" not in trigger and "sasl" not in meta
        assert ("tls" in meta) == (env["CONVEYOR_SECURITY_PROTOCOL"] in ("SSL", "SASL_SSL"))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_scaled_objects_exclude_persistent_lag_by_default(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    """A stage waiting out an outage holds its offsets; KEDA must not scale it up for that lag."""
    manifests, values = rendered[name], VALUE_SETS[name]
    autoscaled = {s for s in WORKERS if (values.get(s) or {}).get("autoscaling", {}).get("enabled", True)}
    scaled = {so["metadata"]["name"]: so for so in manifests.of("ScaledObject")}
    assert set(scaled) == {f"{k8s.RELEASE}-{s}" for s in autoscaled}
    for so_name, so in scaled.items():
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"]["excludePersistentLag"] == "true", so_name
        assert not k8s.object_errors(so), (so_name, k8s.object_errors(so))


def test_exclude_persistent_lag_can_be_turned_off_per_stage() -> None:
    manifests = k8s.render({"summarizer": {"autoscaling": {"excludePersistentLag": False}}})
    flags = {so["metadata"]["name"]: so["spec"]["triggers"][0]["metadata"]["excludePersistentLag"]
             for so in manifests.of("ScaledObject")}
    assert flags == {f"{k8s.RELEASE}-{s}": "false" if s == "summarizer" else "true" for s in WORKERS}
    failures = {so["metadata"]["name"]: errs for so in manifests.of("ScaledObject") if (errs := k8s.object_errors(so))}
    assert not failures, failures


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_topic_has_a_topic_resource(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    resources = manifests.of("Topic")
    if (values.get("kafka") or {}).get("external"):
        assert resources == []
        return
    by_name = {t["spec"]["overwriteTopicName"]: t for t in resources}
    assert sorted(by_name) == sorted(topics.all_topics(_prefix(values)))
    config = manifests.get("ConfigMap", f"{k8s.RELEASE}-config")["data"]
    for topic in resources:
        assert topic["spec"]["partitions"] == int(config["CONVEYOR_PARTITIONS"])
        assert int(topic["spec"]["additionalConfig"]["retention.ms"]) > 0
        assert topic["spec"]["replicationFactor"] % 2 == 1


def test_topic_prefix_flows_everywhere() -> None:
    manifests = k8s.render({"kafka": {"topicPrefix": "acme.docs"}})
    assert sorted(t["spec"]["overwriteTopicName"] for t in manifests.of("Topic")) == sorted(topics.all_topics("acme.docs"))
    groups = {so["spec"]["triggers"][0]["metadata"]["consumerGroup"] for so in manifests.of("ScaledObject")}
    assert groups == {topics.consumer_group(s, "acme.docs") for s in WORKERS}
    assert all(k8s.object_errors(t) == [] for t in manifests.of("Topic"))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_configuration_is_valid_for_the_application(name: str, rendered: dict[str, k8s.Manifests],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's environment names only real settings and parses as Settings."""
    manifests = rendered[name]
    fields = {f"CONVEYOR_{f.upper()}" for f in Settings.model_fields}
    for component in COMPONENTS:
        env = manifests.effective_env(manifests.deployment_for(component))
        unknown = {k for k in env if k.startswith("CONVEYOR_")} - fields
        assert not unknown, f"{component}: not settings: {sorted(unknown)}"
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("CONVEYOR_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            settings = Settings()
        assert settings.metrics_port == 9100
        assert settings.gateway_host == "0.0.0.0" and settings.gateway_port == 8000
        assert str(settings.home) == "/var/lib/conveyor"
        values = VALUE_SETS[name]
        assert settings.status_store == (values.get("statusStore") or {}).get("backend", "sqlite")
        assert settings.topic_prefix == _prefix(values)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_extractors_parses_fit_its_memory_limit(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    """Up to twice the parser processes parse at once, each capped; with the worker itself that fits
    the container, so a hostile document fails its record instead of getting the pod OOM-killed."""
    manifests = rendered[name]
    deployment = manifests.deployment_for("extractor")
    env = manifests.effective_env(deployment)
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    processes = int(env["CONVEYOR_PARSE_PROCESSES"]) or math.ceil(quantity(limits["cpu"]))  # 0: the CPU limit, rounded up
    cap = int(env["CONVEYOR_PARSE_MEMORY_MB"])
    assert cap > 0, "an uncapped parse can take the whole pod"
    assert (2 * processes * cap + 300) * 2**20 <= quantity(limits["memory"])


def test_secret_holds_only_what_is_set() -> None:
    manifests = k8s.render({"secrets": {"webhookSecret": "w", "openaiApiKey": "k", "redisUrl": "redis://:p@r:6379/0"}})
    data = k8s.decode_secret(manifests.get("Secret", f"{k8s.RELEASE}-secrets"))
    assert data == {"CONVEYOR_WEBHOOK_SECRET": "w", "CONVEYOR_OPENAI_API_KEY": "k",
                    "CONVEYOR_REDIS_URL": "redis://:p@r:6379/0"}
    generated = k8s.decode_secret(k8s.render().get("Secret", f"{k8s.RELEASE}-secrets"))
    assert len(generated["CONVEYOR_WEBHOOK_SECRET"]) >= 32


def test_existing_secret_is_used_everywhere() -> None:
    values = {"secrets": {"existingSecret": "creds"}, "kafka": {"securityProtocol": "SASL_SSL"}}
    manifests = k8s.render(values)
    assert [s["metadata"]["name"] for s in manifests.of("Secret")] == [f"{k8s.RELEASE}-api-keys"]
    for component in COMPONENTS:
        container = manifests.deployment_for(component)["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "creds"}} in container["envFrom"]
    (auth,) = manifests.of("TriggerAuthentication")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {"creds"}


def test_shared_volume_only_for_local_stores(rendered: dict[str, k8s.Manifests]) -> None:
    for name, manifests in rendered.items():
        values = VALUE_SETS[name]
        local = ((values.get("statusStore") or {}).get("backend", "sqlite") == "sqlite"
                 or (values.get("blobStore") or {}).get("backend", "file") == "file")
        claims = manifests.of("PersistentVolumeClaim")
        assert bool(claims) == local, name
        for component in COMPONENTS:
            volumes = {v["name"]: v for v in manifests.deployment_for(component)["spec"]["template"]["spec"]["volumes"]}
            assert ("persistentVolumeClaim" in volumes["home"]) == local
            assert "emptyDir" in volumes["tmp"]


# --------------------------------------------------------------------------- pods: security and probes


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_are_locked_down(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    for deployment in rendered[name].of("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            csc = container["securityContext"]
            assert csc["runAsNonRoot"] is True
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["readOnlyRootFilesystem"] is True
            assert csc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/conveyor"} <= mounts
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def _probe_paths(manifests: k8s.Manifests, component: str) -> dict[str, tuple[str, int]]:
    deployment = manifests.deployment_for(component)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    out = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        out[probe] = (get["path"], port)
    return out


def test_gateway_probes_hit_real_routes(rendered: dict[str, k8s.Manifests]) -> None:
    from conveyor.gateway.app import create_app

    routes = {getattr(r, "path", None) for r in create_app(Settings()).routes}
    manifests = rendered["default"]
    probes = _probe_paths(manifests, "gateway")
    assert probes["livenessProbe"][0] == "/healthz" and probes["readinessProbe"][0] == "/readyz"
    config = manifests.get("ConfigMap", f"{k8s.RELEASE}-config")["data"]
    for path, port in probes.values():
        assert path in routes
        assert port == int(config["CONVEYOR_GATEWAY_PORT"])
    service = manifests.get("Service", f"{k8s.RELEASE}-gateway")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]  # nothing but the API is public
    assert not routes & {"/metrics", "/docs", "/openapi.json"}


async def test_worker_probes_hit_real_endpoints(rendered: dict[str, k8s.Manifests]) -> None:
    """Start the workers' real probe server and request every path the chart probes."""
    from conveyor.health import serve_probes

    manifests = rendered["default"]
    config = manifests.get("ConfigMap", f"{k8s.RELEASE}-config")["data"]
    port = free_port()
    server = await serve_probes("127.0.0.1", port, ready=lambda: True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for stage in WORKERS:
                for probe, (path, probe_port) in _probe_paths(manifests, stage).items():
                    assert probe_port == int(config["CONVEYOR_METRICS_PORT"]) == 9100
                    response = await client.get(path)
                    assert response.status_code == 200, (stage, probe, path)
            assert (await client.get("/nope")).status_code == 404
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- network policies


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def _pod_matches(policy: dict[str, Any], deployment: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("name", ["default", "production", "laptop"])
def test_network_policies(name: str, rendered: dict[str, k8s.Manifests]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    policies = manifests.of("NetworkPolicy")
    openai = (values.get("summarizer") or {}).get("backend") == "openai"
    for component in COMPONENTS:
        deployment = manifests.deployment_for(component)
        (policy,) = [p for p in policies if _pod_matches(p, deployment)]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        # The API port of the gateway, and every component's metrics port (the gateway's docs too).
        assert [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["ingress"]] == \
            ([[8000], [9100]] if component == "gateway" else [[9100]])
        ports = _egress_ports(policy)
        assert 53 in ports and 9093 in ports
        rules = policy["spec"]["egress"]
        assert all(rule.get("ports") for rule in rules[:2]), "DNS and broker rules are port-limited"
        redis = (values.get("statusStore") or {}).get("backend") == "redis"
        s3 = (values.get("blobStore") or {}).get("backend") == "s3"
        llm = component == "summarizer" and openai
        webhooks = component == "notifier"
        # Only what the component needs: DNS, broker, then the stores and its own endpoints.
        assert len(rules) == 2 + redis + s3 + llm + webhooks, (component, rules)
        if redis:
            assert 6379 in ports
        if llm:
            assert 443 in ports
        if not (s3 or llm or webhooks):
            assert not ({80, 443} & ports), (component, ports)


# --------------------------------------------------------------------------- skaffold and images


# The two base stages of shared/Dockerfile, as skaffold builds them, and the build argument that
# passes each into a service's Dockerfile.
BASE_IMAGES = {"conveyor-build": ("build", "BUILD"), "conveyor-runtime": ("runtime", "RUNTIME")}


def test_skaffold_artifacts_match_chart_images() -> None:
    config = k8s.skaffold_config()
    assert config["apiVersion"].startswith("skaffold/v4")
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    services = {image: a for image, a in artifacts.items() if image not in BASE_IMAGES}
    for image, (target, _) in BASE_IMAGES.items():
        assert artifacts[image]["docker"] == {"dockerfile": "shared/Dockerfile", "target": target}
    values, used = k8s.skaffold_values(config)
    assert used == {k8s.template_name(image) for image in services}, "every service artifact reaches the chart"
    k8s.validate_values(values)
    manifests = k8s.render(values)
    images = {c["image"] for d in manifests.of("Deployment") for c in d["spec"]["template"]["spec"]["containers"]}
    assert {k8s.image_repository(i) for i in images} == set(services)
    assert all(i.endswith("@sha256:" + "0" * 64) for i in images)
    for image, artifact in artifacts.items():
        assert artifact["context"] == "."
        assert (k8s.REPO / artifact["docker"]["dockerfile"]).is_file()
    for image, artifact in services.items():
        dockerfile = k8s.REPO / artifact["docker"]["dockerfile"]
        assert dockerfile.parent.name == image.removeprefix("conveyor-")
        # Built on the two base stages skaffold built first, passed in as build arguments.
        assert artifact["requires"] == [{"image": base, "alias": alias} for base, (_, alias) in BASE_IMAGES.items()]
    (release,) = config["deploy"]["helm"]["releases"]
    assert (k8s.REPO / release["chartPath"]).resolve() == k8s.CHART
    for path in release.get("valuesFiles", []):
        assert (k8s.REPO / path).is_file()
    (forward,) = config["portForward"]
    assert forward["resourceName"] == f"{release['name']}-gateway" and forward["port"] == 8000
    assert {p["name"] for p in config["profiles"]} >= {"kind", "remote"}


@pytest.fixture(scope="module")
def skaffold_rendered() -> k8s.Manifests:
    """The chart as `skaffold dev` deploys it: every image, the operator included."""
    return k8s.render(k8s.skaffold_values(k8s.skaffold_config())[0])


def test_base_images() -> None:
    dockerfile = k8s.Dockerfile.parse(k8s.REPO / "shared" / "Dockerfile")
    assert dockerfile.instructions("FROM") == ["python:3.11-slim AS build", "python:3.11-slim AS runtime"]
    build, runtime = 0, 1
    # The build stage installs the uv release the workspace pins for its tests.
    pinned_uv = next(r for r in k8s.workspace_config()["dependency-groups"]["test"] if r.startswith("uv=="))
    assert dockerfile.instructions("RUN", build) == [f"pip install {pinned_uv}"]
    assert dockerfile.env(build)["UV_FROZEN"] == "1", "images install exactly what uv.lock says"
    assert dockerfile.env(build)["UV_PROJECT_ENVIRONMENT"] == "/opt/conveyor"
    (user,) = dockerfile.instructions("USER", runtime)
    assert user.split(":")[0] == "10001", "non-root"
    assert not dockerfile.instructions("HEALTHCHECK")
    assert dockerfile.env(runtime).get("PYTHONUNBUFFERED") == "1"
    assert dockerfile.env(runtime)["PATH"].startswith("/opt/conveyor/bin:")
    runtime_runs = " ".join(dockerfile.instructions("RUN", runtime))
    assert "apt-get" not in runtime_runs and "install" not in runtime_runs, "no installer in the runtime image"
    assert not dockerfile.instructions("COPY", runtime), "the runtime base holds no code"


@pytest.mark.parametrize("component", (*COMPONENTS, "operator"))
def test_service_dockerfile(component: str, skaffold_rendered: k8s.Manifests) -> None:
    dockerfile = k8s.Dockerfile.parse(k8s.REPO / "services" / component / "Dockerfile")
    assert dockerfile.instructions("FROM") == ["${BUILD} AS install", "${RUNTIME}"]
    assert not dockerfile.instructions("USER"), "keeps the runtime image's non-root user"
    assert not dockerfile.instructions("HEALTHCHECK")
    install, final = 0, dockerfile.final
    for source in dockerfile.instructions("COPY", install):
        assert source.split()[0].startswith(f"services/{component}/"), "only its own folder goes in"
    for command in dockerfile.instructions("RUN", install):
        assert command.startswith(f"uv sync --package conveyor-{component}"), command
    assert dockerfile.instructions("COPY", final) == ["--from=install /opt/conveyor /opt/conveyor"]
    assert not dockerfile.instructions("RUN", final)
    container = skaffold_rendered.deployment_for(component)["spec"]["template"]["spec"]["containers"][0]
    entrypoint = dockerfile.exec_form("ENTRYPOINT")
    assert entrypoint == container["command"] and not container.get("args")
    (script,) = entrypoint
    assert script in k8s.service_config(component)["project"]["scripts"], "a console script of the service"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (k8s.REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "allow-list: everything else (.venv, .git, tests) stays out"
    assert {"!pyproject.toml", "!uv.lock", "!shared/", "!services/"} <= set(lines)


# --------------------------------------------------------------------------- values are documented


def test_every_value_is_typed_and_documented() -> None:
    values = k8s.load_values(k8s.CHART / "values.yaml")
    with helm_python.Chart.load(k8s.CHART) as chart:
        schema = chart.schema
    assert schema is not None

    def schema_at(path: str) -> dict[str, Any] | None:
        node: dict[str, Any] | None = schema
        for part in path.split("."):
            if node is None:
                return None
            if "$ref" in node:
                node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
            props = node.get("properties") or {}
            if part in props:
                node = props[part]
            elif isinstance(node.get("additionalProperties"), dict):  # a typed map
                node = node["additionalProperties"]
            else:
                return None
        return node

    def closed(node: dict[str, Any]) -> bool:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        return node.get("type") != "object" or "additionalProperties" in node

    untyped = [p for p in k8s.walk_leaves(values) if schema_at(p) is None]
    assert not untyped, f"values missing from values.schema.json: {untyped}"
    assert schema["additionalProperties"] is False
    open_objects = [p for p in k8s.walk_leaves(values) if not closed(schema_at(p) or {})]
    assert not open_objects, open_objects

    rows = k8s.documented_values((k8s.CHART / "values.yaml").read_text())
    documented = {row.path for row in rows if row.description}
    undocumented = [p for p in k8s.walk_leaves(values)
                    if not any(p == d or p.startswith(d + ".") for d in documented)]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    docs = (k8s.REPO / "docs" / "kubernetes.md").read_text()
    missing_in_docs = [row.path for row in rows if f"| `{row.path}` |" not in docs]
    assert not missing_in_docs, f"values missing from the table in docs/kubernetes.md: {missing_in_docs}"


# --------------------------------------------------------------------------- credentials

def test_the_generated_api_key_matches_its_hash_and_the_gateway_reads_it(tmp_path) -> None:
    """The chart's own key is one the gateway's key file accepts: same format, same hash, same tenant."""
    import base64

    from conveyor.credentials import KeyRing

    manifests = k8s.render({"auth": {"defaultTenant": "acme"}})
    secret = manifests.get("Secret", f"{k8s.RELEASE}-api-keys")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    (tmp_path / "api-keys.json").write_text(data["api-keys.json"])
    entry = KeyRing(tmp_path / "api-keys.json").verify(data["api-key"])
    assert entry is not None and entry.tenant == "acme"
    config = manifests.get("ConfigMap", f"{k8s.RELEASE}-config")["data"]
    gateway = manifests.deployment_for("gateway")["spec"]["template"]["spec"]
    (mount,) = [m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
    assert config["CONVEYOR_API_KEYS_FILE"] == f"{mount['mountPath']}/api-keys.json" and "subPath" not in mount
    (volume,) = [v for v in gateway["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == f"{k8s.RELEASE}-api-keys"
    for component in WORKERS:
        volumes = manifests.deployment_for(component)["spec"]["template"]["spec"]["volumes"]
        assert "api-keys" not in {v["name"] for v in volumes}, f"{component} has no business with API keys"


def test_an_existing_api_key_secret_is_mounted_instead() -> None:
    manifests = k8s.render({"auth": {"existingSecret": "our-keys"}})
    assert f"{k8s.RELEASE}-api-keys" not in {s["metadata"]["name"] for s in manifests.of("Secret")}
    gateway = manifests.deployment_for("gateway")["spec"]["template"]["spec"]
    (volume,) = [v for v in gateway["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "our-keys"


def test_monitoring_objects_need_the_prometheus_operators_api() -> None:
    wanted = {"serviceMonitor": {"enabled": True}, "monitoring": {"prometheusRule": {"enabled": True}}}
    # This render, like a cluster without the Prometheus operator, does not serve monitoring.coreos.com/v1.
    without_api = k8s.render(wanted)
    assert not {"ServiceMonitor", "PrometheusRule"} & without_api.kinds()
    with helm_python.Chart.load(k8s.CHART) as chart:
        notes = chart.render(wanted, name=k8s.RELEASE, namespace="conveyor")["conveyor/templates/NOTES.txt"]
    assert "ServiceMonitor and PrometheusRule were not rendered" in notes
    forced = k8s.render({**wanted, "monitoring": {"prometheusRule": {"enabled": True}, "requireApi": False}})
    assert {"ServiceMonitor", "PrometheusRule"} <= forced.kinds()


def test_the_gateway_metrics_are_scraped_off_its_public_service() -> None:
    manifests = k8s.render({"serviceMonitor": {"enabled": True}, "monitoring": {"requireApi": False}})
    (monitor,) = manifests.of("ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    service = manifests.get("Service", f"{k8s.RELEASE}-gateway-metrics")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["port"] == 9100

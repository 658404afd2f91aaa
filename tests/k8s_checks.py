"""Offline checks of Kubernetes manifests: render the chart, validate objects, read Dockerfiles.

What runs here is real: Helm's Go SDK (helm-python-sdk) renders and lints, kubernetes-validate holds
the built-in API schemas, and custom resources are checked against the upstream CRDs' schemas with
strict field validation, as the API server would.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "conveyor"
CI_VALUES = CHART / "ci"
LAPTOP_VALUES = REPO / "k8s" / "values-laptop.yaml"
SKAFFOLD = REPO / "skaffold.yaml"
# Upstream CRDs, copied into the repository with their source (tests/data/crds/README.md).
CRD_DIR = REPO / "tests" / "data" / "crds"

KUBE_VERSION = "1.30.0"
RELEASE = "conveyor"
NAMESPACE = "conveyor"

# Custom resources validated against their upstream CRD: kind -> (CRD file, group, version).
CRD_KINDS = {
    "ScaledObject": ("keda.sh_scaledobjects.yaml", "keda.sh", "v1alpha1"),
    "TriggerAuthentication": ("keda.sh_triggerauthentications.yaml", "keda.sh", "v1alpha1"),
    "Topic": ("cluster.redpanda.com_topics.yaml", "cluster.redpanda.com", "v1alpha2"),
}
# Prometheus operator kinds: no CRD here, so their shape is checked by hand.
STRUCTURAL_KINDS = {"ServiceMonitor", "PrometheusRule"}


# --------------------------------------------------------------------------- rendering


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def ci_values() -> dict[str, dict[str, Any]]:
    """Every values file the chart is tested with, by short name."""
    files = {p.stem.removesuffix("-values"): load_values(p) for p in sorted(CI_VALUES.glob("*-values.yaml"))}
    files["laptop"] = load_values(LAPTOP_VALUES)
    return files


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> Manifests:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Manifests(docs, notes)


@dataclass
class Manifests:
    docs: list[dict[str, Any]]
    notes: str = ""
    _by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for doc in self.docs:
            self._by_kind.setdefault(doc["kind"], []).append(doc)

    def kinds(self) -> set[str]:
        return set(self._by_kind)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self._by_kind.get(kind, [])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{kind}/{name}: {len(found)} rendered")
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, name)
        except KeyError:
            return None

    def deployment_for(self, component: str) -> dict[str, Any]:
        found = [d for d in self.of("Deployment")
                 if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        if len(found) != 1:
            raise KeyError(f"Deployment of {component}: {len(found)} rendered")
        return found[0]

    def effective_env(self, deployment: dict[str, Any], container: int = 0) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom in order, then env."""
        spec = deployment["spec"]["template"]["spec"]["containers"][container]
        env: dict[str, str] = {}
        for source in spec.get("envFrom", []):
            if "configMapRef" in source:
                cm = self.find("ConfigMap", source["configMapRef"]["name"])
                env.update((cm or {}).get("data", {}))
            elif "secretRef" in source:
                secret = self.find("Secret", source["secretRef"]["name"])
                env.update(decode_secret(secret) if secret else {})
        for var in spec.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
        return env


def decode_secret(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def lint(values: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}",
                            namespace=NAMESPACE, **options)


def validate_values(values: dict[str, Any]) -> None:
    """Raises helm_python.HelmValuesError when values.schema.json rejects the (merged) values."""
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)


# --------------------------------------------------------------------------- validation


def strict_schema(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and does not
    preserve unknown fields: the API server's strict field validation."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(schema)
    return schema


@lru_cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    filename, group, version = CRD_KINDS[kind]
    crd = yaml.safe_load((CRD_DIR / filename).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict_schema(served["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of a custom resource, plus the CEL rules the API server would evaluate."""
    kind = doc["kind"]
    _, group, version = CRD_KINDS[kind]
    errors = []
    if doc.get("apiVersion") != f"{group}/{version}":
        errors.append(f"apiVersion {doc.get('apiVersion')!r}, expected {group}/{version}")
    errors += [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
               for e in crd_validator(kind).iter_errors(doc)]
    spec = doc.get("spec", {})
    if kind == "ScaledObject" and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append("minReplicaCount must be less than or equal to maxReplicaCount")
    if kind == "Topic" and not ("cluster" in spec or "kafkaApiSpec" in spec):
        errors.append("cluster must be specified if kafkaApiSpec is not")
    return errors


def structural_errors(doc: dict[str, Any]) -> list[str]:
    """Shape of Prometheus operator resources (no CRD schema available here)."""
    errors = []
    spec = doc.get("spec") or {}
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"apiVersion {doc.get('apiVersion')!r}")
    if doc["kind"] == "ServiceMonitor":
        if not (spec.get("selector") or {}).get("matchLabels"):
            errors.append("spec.selector.matchLabels is empty")
        endpoints = spec.get("endpoints") or []
        if not endpoints:
            errors.append("spec.endpoints is empty")
        for i, ep in enumerate(endpoints):
            if not ep.get("port"):
                errors.append(f"endpoints[{i}] has no port name")
            unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                                 "relabelings", "metricRelabelings", "tlsConfig"}
            if unknown:
                errors.append(f"endpoints[{i}] unknown fields {sorted(unknown)}")
    elif doc["kind"] == "PrometheusRule":
        groups = spec.get("groups") or []
        if not groups:
            errors.append("spec.groups is empty")
        for group in groups:
            if not group.get("name") or not group.get("rules"):
                errors.append(f"group {group.get('name')!r} needs a name and rules")
            for rule in group.get("rules") or []:
                if bool(rule.get("alert")) == bool(rule.get("record")) or not rule.get("expr"):
                    errors.append(f"rule {rule} needs exactly one of alert/record, and expr")
    return errors


def object_errors(doc: dict[str, Any]) -> list[str]:
    """Why the API server would reject this object; empty when it would accept it."""
    kind = doc["kind"]
    if kind in CRD_KINDS:
        return crd_errors(doc)
    if kind in STRUCTURAL_KINDS:
        return structural_errors(doc)
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{doc.get('apiVersion')} {kind} is not a Kubernetes {KUBE_VERSION} kind and has no CRD to check"]
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


# --------------------------------------------------------------------------- skaffold and Dockerfiles

_TEMPLATE_VAR = re.compile(r"\{\{\s*\.(IMAGE_(?:REPO|TAG|DIGEST|NAME|FULLY_QUALIFIED))_(\w+)\s*\}\}")


def skaffold_config() -> dict[str, Any]:
    return yaml.safe_load(SKAFFOLD.read_text())


def template_name(image: str) -> str:
    """How skaffold spells an artifact's image in template variables (/ and - become _)."""
    return re.sub(r"[/\-.]", "_", image)


def skaffold_values(config: dict[str, Any], *, digest: str = "sha256:" + "0" * 64,
                    tag: str = "dev") -> tuple[dict[str, Any], set[str]]:
    """The values skaffold would pass to helm for built images, and the template names it used."""
    (release,) = config["deploy"]["helm"]["releases"]
    images = {template_name(a["image"]): a["image"] for a in config["build"]["artifacts"]}
    used: set[str] = set()

    def substitute(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            var, name = match.groups()
            if name not in images:
                raise KeyError(f"skaffold template names unknown artifact {name!r}")
            used.add(name)
            return {"IMAGE_REPO": images[name], "IMAGE_TAG": tag, "IMAGE_DIGEST": digest,
                    "IMAGE_NAME": images[name], "IMAGE_FULLY_QUALIFIED": f"{images[name]}:{tag}@{digest}"}[var]

        return _TEMPLATE_VAR.sub(one, text)

    values: dict[str, Any] = {}
    for path in release.get("valuesFiles", []):
        values = deep_merge(values, load_values(REPO / path))
    # skaffold passes setValues with --set (typed) and setValueTemplates after templating.
    for dotted, value in release.get("setValues", {}).items():
        text = str(value).lower() if isinstance(value, bool) else value
        values = deep_merge(values, helm_python.parse_set_string(f"{dotted}={text}"))
    for dotted, value in release.get("setValueTemplates", {}).items():
        values = deep_merge(values, helm_python.parse_set_string_values(f"{dotted}={substitute(value)}"))
    return values, used


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def image_repository(image: str) -> str:
    """The repository part of an image reference (no tag, no digest)."""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition(":")
    return head if head and "/" not in tail else image


@dataclass
class Dockerfile:
    """A Dockerfile's stages as lists of (instruction, argument) pairs, continuations joined."""

    stages: list[list[tuple[str, str]]]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            logical.append(pending + line)
            pending = ""
        stages: list[list[tuple[str, str]]] = []
        for line in logical:
            instruction, _, argument = line.partition(" ")
            instruction = instruction.upper()
            if instruction == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((instruction, argument.strip()))
        return cls(stages)

    def instructions(self, name: str, stage: int | None = None) -> list[str]:
        stages = self.stages if stage is None else [self.stages[stage]]
        return [arg for s in stages for ins, arg in s if ins == name]

    @property
    def final(self) -> int:
        return len(self.stages) - 1

    def exec_form(self, name: str) -> list[str]:
        """The last ENTRYPOINT/CMD of the final stage as an argv list."""
        (*_, argument) = self.instructions(name, self.final)
        return json.loads(argument) if argument.startswith("[") else shlex.split(argument)

    def env(self, stage: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for argument in self.instructions("ENV", stage):
            for token in shlex.split(argument):
                key, sep, value = token.partition("=")
                if sep:
                    out[key] = value
        return out


def workspace_config() -> dict[str, Any]:
    """The workspace root's pyproject.toml."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def service_config(name: str) -> dict[str, Any]:
    """services/<name>/pyproject.toml."""
    return tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())


def walk_leaves(values: Any, prefix: str = "") -> Iterable[str]:
    """Dotted paths of a values tree's leaves (lists and empty maps count as leaves)."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from walk_leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


# --------------------------------------------------------------------------- values documentation


@dataclass
class DocumentedValue:
    path: str
    default: Any
    description: str


def documented_values(text: str) -> list[DocumentedValue]:
    """The keys of a values.yaml that carry a `# --` comment, in file order.

    A commented key whose value is a mapping documents its whole subtree (e.g. `resources`);
    keys inside list items belong to their list.
    """
    values = yaml.safe_load(text) or {}
    rows: list[DocumentedValue] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    covered_prefix: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body.startswith("--"):
                comment = [body[2:].strip()]
            elif comment:
                comment.append(body)
            continue
        if stripped.startswith("- "):
            comment = []
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+):", stripped)
        if not match:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group(1)]
        try:
            value: Any = values
            for part in path:
                value = value[part]
        except (KeyError, TypeError):  # inside a list item
            comment = []
            continue
        stack.append((indent, match.group(1)))
        dotted = ".".join(path)
        if covered_prefix and dotted.startswith(covered_prefix + "."):
            comment = []
            continue
        covered_prefix = None
        if comment:
            rows.append(DocumentedValue(dotted, value, " ".join(comment)))
            if isinstance(value, dict) and value:
                covered_prefix = dotted
        comment = []
    return rows


def markdown_default(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
        return text if len(text) <= 48 else "see values.yaml"
    return str(value)

"""Alerting rules and dashboards: valid PromQL, only metrics that exist, rules that fire when they should."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from conveyor import metrics
from conveyor.topics import STAGES

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "charts" / "conveyor" / "alerts" / "conveyor-rules.yaml"
RULE_TESTS = ROOT / "tests" / "promtool" / "conveyor-rules.test.yaml"
DASHBOARDS = sorted((ROOT / "charts" / "conveyor" / "dashboards").glob("*.json"))
LOCAL_CONFIG = ROOT / "scripts" / "prometheus-local.yml"
PROMTOOL = "/usr/bin/promtool"

# Labels Prometheus or the scrape config attach to every target's series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "instance_name"}
# Metrics from outside Conveyor that dashboards and alerts may use, with their labels.
EXTERNAL = {
    "up": set(),
    "kube_deployment_status_replicas": {"deployment"},
    "kube_deployment_spec_replicas": {"deployment"},
    "kube_deployment_status_replicas_available": {"deployment"},
}
GRAFANA_VALUES = {
    "__rate_interval": "5m",
    "namespace": ".*",
    "stage": "(" + "|".join(STAGES) + ")",
}


@cache
def conveyor_series() -> dict[str, set[str]]:
    """Every series name `conveyor.metrics` exposes, with its labels."""
    series: dict[str, set[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        name, labels = collector._name, set(collector._labelnames)
        if collector._type == "counter":
            series[f"{name}_total"] = labels
        elif collector._type == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_names(expr: str, where: str) -> None:
    known = conveyor_series()
    for selector in selectors(expr):
        name = selector.name
        assert name, f"{where}: selector without a metric name in {expr}"
        if name in known:
            allowed = known[name] | TARGET_LABELS
        elif name in EXTERNAL:
            allowed = EXTERNAL[name] | TARGET_LABELS
        elif name in recorded():
            continue
        else:
            raise AssertionError(f"{where}: unknown metric {name!r} (not in conveyor.metrics, not external)")
        used = {m.name for m in selector.matchers.matchers}
        assert used <= allowed, f"{where}: {name} has no label(s) {sorted(used - allowed)}"


def dashboard_queries() -> list[tuple[str, str]]:
    queries: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']} {target['refId']}", target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                # Grafana's label_values(<selector>, <label>): the selector is PromQL.
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
                assert match, variable["definition"]
                selector, label = match.groups()
                assert label in TARGET_LABELS | conveyor_series().get(selector, set()), variable["definition"]
                queries.append((f"{path.name}: variable {variable['name']}", selector))
    return queries


def substitute(expr: str) -> str:
    """Replace Grafana variables with values Grafana could send."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VALUES, f"undeclared dashboard variable ${name} in {expr}"
        return GRAFANA_VALUES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


# --- rules -------------------------------------------------------------------------------------

def test_promtool_check_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    for alert in (rule["alert"] for rule in rules() if "alert" in rule):
        outcomes = [bool(c.get("exp_alerts")) for c in checks if c["alertname"] == alert]
        assert True in outcomes, f"{alert}: no case where it fires"
        assert False in outcomes, f"{alert}: no case where it stays quiet"


def test_alerts_are_documented() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_rule_uses_known_metrics(rule: dict[str, Any]) -> None:
    check_names(rule["expr"], rule.get("alert") or rule["record"])


def test_local_prometheus_config_is_valid() -> None:
    result = subprocess.run([PROMTOOL, "check", "config", str(LOCAL_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["../.conveyor/prometheus-targets.json"]
    assert (LOCAL_CONFIG.parent / config["rule_files"][0]).resolve() == RULES


# --- dashboards --------------------------------------------------------------------------------

def test_dashboards_are_up_to_date() -> None:
    script = ROOT / "scripts" / "gen_dashboards.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name for p in DASHBOARDS} == {"conveyor-pipeline.json", "conveyor-gateway.json"}


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "gen_dashboards.py"
    subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path)], check=True, capture_output=True)
    stale = tmp_path / "conveyor-gateway.json"
    stale.write_text(stale.read_text().replace("Conveyor / Gateway", "Edited by hand"))
    result = subprocess.run([sys.executable, str(script), "--check", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "stale:" in result.stderr and "conveyor-gateway.json" in result.stderr


@pytest.mark.parametrize(("where", "expr"), dashboard_queries(), ids=lambda v: v if " " not in v else None)
def test_dashboard_query_parses_and_uses_known_metrics(where: str, expr: str) -> None:
    concrete = substitute(expr)
    promql_parser.parse(concrete)
    check_names(concrete, where)


def test_dashboard_structure() -> None:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem
        variables = [v["name"] for v in board["templating"]["list"]]
        assert variables[0] == "datasource" and "namespace" in variables
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
            area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                    for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not area & cells, f"{path.name}: {panel['title']} overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                if "$stage" in target["expr"]:
                    assert "stage" in variables


def test_pipeline_dashboard_covers_the_pipeline() -> None:
    board = json.loads((ROOT / "charts/conveyor/dashboards/conveyor-pipeline.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for needle in ("conveyor_consumer_lag", "conveyor_events_consumed_total", "conveyor_events_produced_total",
                   "histogram_quantile(0.5, sum by (stage, le) (rate(conveyor_processing_seconds_bucket",
                   "histogram_quantile(0.95, sum by (stage, le) (rate(conveyor_processing_seconds_bucket",
                   "histogram_quantile(0.99, sum by (stage, le) (rate(conveyor_processing_seconds_bucket",
                   "conveyor_events_failed_total", "conveyor_events_dead_lettered_total",
                   "kube_deployment_status_replicas{", "conveyor_http_requests_total",
                   "conveyor_http_request_duration_seconds_bucket", "conveyor_llm_request_duration_seconds_bucket",
                   "conveyor_llm_rate_limited_total", "conveyor_circuit_open"):
        assert needle in exprs, needle


def test_checks_reject_unknown_metrics_and_labels() -> None:
    with pytest.raises(AssertionError, match="unknown metric 'conveyor_events_consumed'"):
        check_names("rate(conveyor_events_consumed[5m])", "bare counter name")
    with pytest.raises(AssertionError, match="no label"):
        check_names('conveyor_consumer_lag{stage="extractor"}', "lag has no stage label")
    with pytest.raises(AssertionError, match="undeclared dashboard variable"):
        substitute("rate(conveyor_jobs_completed_total{pod=~\"$pod\"}[5m])")


def test_metrics_reference_lists_every_metric() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|") for line in text.splitlines()
            if line.startswith("| `conveyor_")}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            name = collector._name + ("_total" if collector._type == "counter" else "")
            assert name in rows, f"docs/observability.md has no row for {name}"
            _, _, kind, labels, _, _ = rows[name]
            assert kind.strip() == collector._type, name
            assert set(re.findall(r"`(\w+)`", labels)) == set(collector._labelnames), name
    assert len(rows) == sum(isinstance(c, MetricWrapperBase) for c in vars(metrics).values())


# --- chart templates ---------------------------------------------------------------------------

CHART = ROOT / "charts" / "conveyor"
MONITORING_TEMPLATES = ("conveyor/templates/monitoring/dashboards-configmap.yaml",
                        "conveyor/templates/monitoring/prometheusrule.yaml")


@pytest.fixture(scope="module")
def monitoring_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's metadata, _helpers.tpl, values and monitoring templates and files, without the rest."""
    import shutil

    chart = tmp_path_factory.mktemp("chart") / "conveyor"
    (chart / "templates").mkdir(parents=True)
    for name in ("Chart.yaml", "values.yaml", "values.schema.json"):
        if (CHART / name).exists():
            shutil.copy(CHART / name, chart / name)
    shutil.copy(CHART / "templates" / "_helpers.tpl", chart / "templates")
    for folder in ("templates/monitoring", "dashboards", "alerts"):
        shutil.copytree(CHART / folder, chart / folder)
    return chart


def render(chart: Path, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import helm_python

    out = helm_python.Chart.load(str(chart)).render(values, name="docs", namespace="prod", is_install=True)
    return {path: yaml.safe_load(out[path]) for path in MONITORING_TEMPLATES if out.get(path, "").strip()}


def test_chart_renders_no_monitoring_objects_by_default(monitoring_chart: Path) -> None:
    assert render(monitoring_chart, {}) == {}


def test_chart_renders_dashboards_and_rules(monitoring_chart: Path) -> None:
    import kubernetes_validate

    rendered = render(monitoring_chart, {"monitoring": {
        "requireApi": False,  # no cluster here to serve monitoring.coreos.com/v1
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Conveyor"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    }})
    configmap = rendered[MONITORING_TEMPLATES[0]]
    kubernetes_validate.validate(configmap, "1.30.0", strict=True)
    assert configmap["metadata"]["name"] == "docs-conveyor-dashboards"
    assert configmap["metadata"]["namespace"] == "prod"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Conveyor"}
    assert {name: json.loads(text) for name, text in configmap["data"].items()} == {
        path.name: json.loads(path.read_text()) for path in DASHBOARDS
    }

    rule = rendered[MONITORING_TEMPLATES[1]]
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "docs"
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}


def test_dashboards_namespace_can_be_moved(monitoring_chart: Path) -> None:
    rendered = render(monitoring_chart, {"monitoring": {"dashboards": {"enabled": True, "namespace": "grafana"}}})
    assert rendered[MONITORING_TEMPLATES[0]]["metadata"]["namespace"] == "grafana"
    assert MONITORING_TEMPLATES[1] not in rendered

"""The dashboards and alert rules against a real Prometheus scraping the real pipeline processes.

One run of the gateway and one worker per stage, scraped the way scripts/prometheus-local.yml
scrapes `conveyor up` (the same scrape job and rules file, pointed at a targets file written by
`conveyor up`'s own writer), proves that:

- every dashboard query and every rule expression is accepted by Prometheus and evaluates;
- the core panels show data for a running pipeline (throughput, handler latency, lag, gateway
  traffic and latency, dead letters, jobs in and out), with the `namespace` the local config adds;
- the lag the dashboards show is exactly what `conveyor lag --json` prints, partition by partition.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.cli.supervisor import Child, write_prometheus_targets
from conveyor.kafka.clients import make_producer
from conveyor.cli.embedded_broker import free_port
from conveyor.settings import Settings
from conveyor.topics import STAGES, consumer_group, input_topic
from documents import english_text
from pipeline_harness import Pipeline
from prometheus_server import PrometheusServer, Result

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = ROOT / "scripts" / "prometheus-local.yml"
RULES = ROOT / "charts" / "conveyor" / "alerts" / "conveyor-rules.yaml"
DASHBOARDS = {path.name: json.loads(path.read_text())
              for path in sorted((ROOT / "charts" / "conveyor" / "dashboards").glob("*.json"))}

JOBS = 30
BACKLOG_JOBS = 12
GARBAGE = (b"\x00\xff\xfe not an event", b'{"json": "but not an event"}')
LAG_INTERVAL_SECONDS = 1.0
# What Grafana sends for "All": the namespace variable's allValue, and for the custom stage
# variable the regex alternation of its values.
ALL = {"namespace": ".*", "stage": "(" + "|".join(STAGES) + ")", "__rate_interval": "1m"}


# --- Prometheus configured like scripts/prometheus-local.yml -----------------------------------

class LocalPrometheus(PrometheusServer):
    """The scrape job and rule files of scripts/prometheus-local.yml, on this test's targets file,
    with the helper's 1 s scrape and evaluation intervals."""

    def __init__(self, targets_file: Path) -> None:
        local = yaml.safe_load(LOCAL_CONFIG.read_text())
        rule_files = [(LOCAL_CONFIG.parent / path).resolve() for path in local["rule_files"]]
        super().__init__(file_sd=[targets_file], rule_files=rule_files)
        self.local = local

    def config(self) -> dict[str, Any]:
        config = super().config()
        jobs = copy.deepcopy(self.local["scrape_configs"])
        for job in jobs:
            for sd in job.get("file_sd_configs", []):
                sd["files"] = self.file_sd
                sd["refresh_interval"] = "1s"
        config["scrape_configs"] = jobs
        return config


# --- dashboards ----------------------------------------------------------------------------------

def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}) as Grafana would before sending the query."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"dashboard variable ${name} has no test value: {expr}"
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query variable's selector."""
    found = []
    for name, board in DASHBOARDS.items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{name} / {panel['title']} / {target['refId']}", target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
                assert match, variable["definition"]
                found.append((f"{name} / variable {variable['name']}", match.group(1)))
    return found


def panel_exprs(board: str, title: str) -> list[str]:
    """The queries of every panel titled `title` (a stat and a graph may share one)."""
    exprs = [target["expr"] for panel in DASHBOARDS[board]["panels"] if panel["title"] == title
             for target in panel.get("targets", [])]
    assert exprs, f"{board} has no panel {title!r}"
    return exprs


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in groups for rule in group["rules"]]


def by(result: Result, *labels: str) -> dict[Any, float]:
    """{label value(s): sample value} of an instant vector."""
    out = {}
    for sample in result:
        key = tuple(sample["metric"].get(label, "") for label in labels)
        out[key[0] if len(labels) == 1 else key] = float(sample["value"][1])
    return out


def positive(result: Result) -> bool:
    return bool(result) and all(float(s["value"][1]) > 0 and math.isfinite(float(s["value"][1])) for s in result)


# --- the pipeline ----------------------------------------------------------------------------------

def run_cli(pipeline: Pipeline, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], env=pipeline.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli_lag(pipeline: Pipeline) -> dict[tuple[str, str, str], int]:
    rows = json.loads(run_cli(pipeline, "lag", "--json"))
    return {(r["group"], r["topic"], str(r["partition"])): r["lag"] for r in rows}


def produce_garbage(pipeline: Pipeline) -> None:
    settings = Settings(bootstrap_servers=pipeline.bootstrap, topic_prefix=pipeline.prefix)

    async def send() -> None:
        producer = make_producer(settings)
        await producer.start()
        try:
            for garbage in GARBAGE:
                await producer.send_and_wait(input_topic("extractor", pipeline.prefix), garbage)
        finally:
            await producer.stop()

    asyncio.run(send())


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def stack(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, LocalPrometheus]]:
    """Gateway + one worker per stage, 30 completed jobs and two dead letters, scraped every second."""
    home = tmp_path_factory.mktemp("conveyor-home")
    pipeline = Pipeline(broker, home, extra_env={"CONVEYOR_LAG_INTERVAL_SECONDS": str(LAG_INTERVAL_SECONDS)})
    ports = {stage: free_port() for stage in STAGES}
    # The file `conveyor up` writes, here with the harness's ports.
    pipeline.operations_port = free_port()  # the gateway's metrics port
    children = [Child("gateway", [], {"CONVEYOR_METRICS_PORT": str(pipeline.operations_port)}, home / "gateway.log")]
    children += [Child(f"{stage}-1", [], {"CONVEYOR_METRICS_PORT": str(port)}, home / f"{stage}-1.log")
                 for stage, port in ports.items()]
    targets_file = home / "prometheus-targets.json"
    write_prometheus_targets(targets_file, children)

    # Prometheus first: it applies discovered targets on a 5 s tick, which overlaps process start.
    with LocalPrometheus(targets_file) as prom:
        try:
            pipeline.start_gateway()
            for stage, port in ports.items():
                pipeline.start_worker(stage, 1, env={"CONVEYOR_METRICS_PORT": str(port)})
            prom.wait_for('up{namespace="local"} == 1', lambda r: len(r) == 1 + len(STAGES), timeout=40)

            # One job first, so every labelled series exists before the bulk of the work: a series
            # born at its final value would show no rate.
            pipeline.wait_for([pipeline.submit(english_text(seed=0, sentences=8))], timeout=60)
            prom.wait_for("conveyor_processing_seconds_count", lambda r: len(r) == len(STAGES))
            prom.wait_for('conveyor_jobs_submitted_total{kind="json"}')

            produce_garbage(pipeline)
            jobs = [pipeline.submit(english_text(seed=seed, sentences=8)) for seed in range(1, JOBS)]
            pipeline.wait_for(jobs, timeout=60)
            # Prometheus has scraped the end state.
            prom.wait_for("sum(conveyor_jobs_completed_total) >= %d" % JOBS)
            prom.wait_for('conveyor_events_dead_lettered_total{stage="extractor"} >= %d' % len(GARBAGE))
            yield pipeline, prom
        finally:
            pipeline.stop_all()


# --- tests -------------------------------------------------------------------------------------

def test_every_dashboard_and_rule_expression_evaluates(stack: tuple[Pipeline, LocalPrometheus]) -> None:
    _, prom = stack
    queries = [(where, substitute(expr, ALL)) for where, expr in dashboard_exprs()] + rule_exprs()
    assert len(queries) > 50
    errors = []
    for where, expr in queries:
        try:
            prom.query(expr)  # a parse error is a 400 (bad_data), an evaluation error a 422
        except RuntimeError as exc:
            errors.append(f"{where}: {exc}")
    assert not errors, "\n".join(errors)
    # The loaded rules evaluate on schedule too, with no error.
    rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {where for where, _ in rule_exprs()}
    assert [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_core_panels_show_the_running_pipeline(stack: tuple[Pipeline, LocalPrometheus]) -> None:
    pipeline, prom = stack
    # Grafana fills the Namespace picker with label_values(conveyor_http_requests_total, namespace):
    # the local config's static label.
    namespaces = prom.api("label/namespace/values", **{"match[]": "conveyor_http_requests_total"})
    assert namespaces == ["local"]
    picked = {**ALL, "namespace": "local"}

    def query(board: str, title: str) -> list[Result]:
        return [prom.query(substitute(expr, picked)) for expr in panel_exprs(board, title)]

    pipeline_board, gateway_board = "conveyor-pipeline.json", "conveyor-gateway.json"
    summarize, notify = input_topic("summarizer", pipeline.prefix), input_topic("notifier", pipeline.prefix)
    groups = {consumer_group(stage, pipeline.prefix) for stage in STAGES}

    # Jobs in and out: the stat and the graph of each.
    for title in ("Jobs submitted / s", "Jobs completed / s"):
        for result in query(pipeline_board, title):
            assert positive(result), (title, result)
    (submitted,) = query(gateway_board, "Jobs submitted / s")
    assert by(submitted, "kind")["json"] > 0

    # Throughput per stage.
    (consumed,) = query(pipeline_board, "Consumed / s")
    assert set(by(consumed, "stage")) == set(STAGES) and positive(consumed), consumed
    (produced,) = query(pipeline_board, "Produced / s")
    assert set(by(produced, "stage", "topic")) == {("extractor", summarize), ("summarizer", notify)}
    assert positive(produced), produced

    # Handler time: p50, p95 and p99 of every stage, and the mean.
    for result in query(pipeline_board, "Handler time p50 / p95 / p99") + query(pipeline_board, "Average handler time"):
        assert set(by(result, "stage")) == set(STAGES) and positive(result), result

    # Lag: every partition of every group, one total.
    (by_partition,) = query(pipeline_board, "Lag by partition")
    assert {(g, t, p) for g, t, p in by(by_partition, "group", "topic", "partition")} == {
        (consumer_group(stage, pipeline.prefix), input_topic(stage, pipeline.prefix), str(p))
        for stage in STAGES for p in range(4)
    }
    (by_stage,) = query(pipeline_board, "Lag by stage")
    assert set(by(by_stage, "group")) == groups
    (total,) = query(pipeline_board, "Total lag")
    assert len(total) == 1

    # Dead letters: the garbage records, on the extractor.
    (dead_rate,) = query(pipeline_board, "Dead-lettered / s")
    assert by(dead_rate, "stage")["extractor"] > 0
    assert by(dead_rate, "stage")["summarizer"] == by(dead_rate, "stage")["notifier"] == 0
    (dead_1h,) = query(pipeline_board, "Dead letters (1h)")
    assert positive(dead_1h), dead_1h

    # Gateway traffic and latency, on both dashboards.
    for board in (pipeline_board, gateway_board):
        (statuses,) = query(board, "Requests / s by status")
        assert by(statuses, "status")["202"] > 0, statuses
    (routes,) = query(gateway_board, "Requests / s by route")
    assert by(routes, "method", "route")[("POST", "/submit")] > 0, routes
    assert not {route for _, route in by(routes, "method", "route")} & {"/healthz", "/readyz", "/metrics"}
    for result in query(pipeline_board, "Request latency") + query(gateway_board, "p50 / p95 / p99"):
        assert len(result) == 1 and positive(result), result
    (p95,) = query(gateway_board, "p95 by route")
    assert by(p95, "route")["/submit"] > 0
    for result in query(gateway_board, "Accepted payload size") + query(gateway_board, "Ingest bytes / s"):
        assert "/submit" in by(result, "route") and positive(result), result


def test_lag_panel_equals_conveyor_lag(stack: tuple[Pipeline, LocalPrometheus]) -> None:
    pipeline, prom = stack
    # No summarizer: new jobs stop in the summarize topic, and the lag there stays put.
    assert pipeline.stop("summarizer-1") == 0
    backlog = [pipeline.submit(english_text(seed=100 + i, sentences=6)) for i in range(BACKLOG_JOBS)]
    wait_until(lambda: all(pipeline.job(j)["stages"].get("extractor", {}).get("state") == "done" for j in backlog),
               "extractor done with the backlog")

    def totals(lag: dict[tuple[str, str, str], int]) -> dict[str, int]:
        return {stage: sum(v for (g, _, _), v in lag.items() if g == consumer_group(stage, pipeline.prefix))
                for stage in STAGES}

    settled = {"extractor": 0, "summarizer": BACKLOG_JOBS, "notifier": 0}

    def settled_lag() -> dict[tuple[str, str, str], int] | None:
        lag = cli_lag(pipeline)
        return lag if totals(lag) == settled else None

    expected = wait_until(settled_lag, f"conveyor lag showing {settled}")
    settled_at = time.time()
    assert sum(1 for (g, _, _), v in expected.items() if v and g.endswith("-summarizer")) >= 2, expected

    # An export that started after `settled_at` (one interval plus an export at most), then a
    # scrape of it: every exported sample is newer than that.
    fresh = settled_at + 2 * LAG_INTERVAL_SECONDS + 3
    prom.wait_for(f"min(timestamp(conveyor_consumer_lag)) > {fresh}", timeout=30)
    picked = {**ALL, "namespace": "local"}
    (lag_expr,) = panel_exprs("conveyor-pipeline.json", "Lag by partition")
    shown = {key: int(value) for key, value in by(prom.query(substitute(lag_expr, picked)),
                                                   "group", "topic", "partition").items()}
    assert shown == expected
    assert cli_lag(pipeline) == expected  # nothing moved while Prometheus caught up

    # The stage view and the alerts' recording rule add the partitions up the same way.
    (by_stage_expr,) = panel_exprs("conveyor-pipeline.json", "Lag by stage")
    assert by(prom.query(substitute(by_stage_expr, picked)), "group") == {
        consumer_group(stage, pipeline.prefix): float(total) for stage, total in settled.items()
    }
    recorded = prom.wait_for('conveyor:consumer_lag:sum{stage="summarizer"}',
                             lambda r: by(r, "stage") == {"summarizer": float(BACKLOG_JOBS)})
    assert recorded[0]["metric"]["namespace"] == "local"

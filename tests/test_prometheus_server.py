"""tests/prometheus_server.py really scrapes: a prometheus_client endpoint, by static target and by
the file_sd file `conveyor up` writes, with Conveyor's rules loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from conveyor.cli.pipeline_file import default_pipeline
from conveyor.cli.supervisor import plan_children, write_prometheus_targets
from conveyor.cli.embedded_broker import free_port
from prometheus_server import PrometheusServer

RULES = Path(__file__).resolve().parent.parent / "charts" / "conveyor" / "alerts" / "conveyor-rules.yaml"


@pytest.fixture(scope="module")
def exporter() -> Iterator[int]:
    """A prometheus_client HTTP endpoint with its own registry; yields its port."""
    registry = CollectorRegistry()
    consumed = Counter("conveyor_events_consumed_total", "Records a stage fetched.", ["stage"], registry=registry)
    consumed.labels("extractor").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def prometheus(exporter: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    # The same file `conveyor up` writes: gateway and one extractor worker, here both on `exporter`.
    home = tmp_path_factory.mktemp("conveyor-home")
    _, pipeline = default_pipeline()
    children = plan_children(pipeline, {"extractor": 1, "summarizer": 0, "notifier": 0},
                             base_metrics_port=exporter, log_dir=home, env={})
    assert [c.env["CONVEYOR_METRICS_PORT"] for c in children] == [str(exporter), str(exporter + 1)]
    for child in children:
        child.env["CONVEYOR_METRICS_PORT"] = str(exporter)
    targets_file = home / "prometheus-targets.json"
    write_prometheus_targets(targets_file, children)
    with PrometheusServer([f"127.0.0.1:{exporter}"], file_sd=[targets_file], rule_files=[RULES]) as server:
        yield server


def test_queries_a_scraped_counter(prometheus: PrometheusServer) -> None:
    (sample,) = prometheus.wait_for('conveyor_events_consumed_total{job="conveyor"}')
    assert sample["metric"]["stage"] == "extractor"
    assert float(sample["value"][1]) == 3
    assert prometheus.value('sum(conveyor_events_consumed_total{job="conveyor"})') == 3


def test_scrapes_the_targets_conveyor_up_writes(prometheus: PrometheusServer) -> None:
    result = prometheus.wait_for('conveyor_events_consumed_total{job="conveyor-file-sd"}',
                                 lambda r: len(r) == 2)
    assert sorted((s["metric"]["service"], s["metric"].get("instance_name")) for s in result) == [
        ("extractor", "extractor-1"), ("gateway", None),
    ]


def test_loads_the_alerting_rules(prometheus: PrometheusServer) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert {"ConveyorConsumerLagGrowing", "ConveyorStageNotConsuming", "ConveyorDeadLetters",
            "ConveyorGateway5xxRatioHigh", "conveyor:consumer_lag:sum"} <= set(rules)
    assert {rule["health"] for rule in rules.values()} <= {"ok", "unknown"}
    # The recording rule evaluates against scraped data.
    prometheus.wait_for("conveyor:events_consumed:rate5m")


def test_bad_query_raises(prometheus: PrometheusServer) -> None:
    with pytest.raises(RuntimeError, match="bad_data"):
        prometheus.query("sum(")

#!/usr/bin/env python3
"""Generate Conveyor's Grafana dashboards as JSON, from plain Python dicts.

The JSON files are committed under charts/conveyor/dashboards/ and shipped by the chart as a
ConfigMap that Grafana's dashboard sidecar picks up. Edit this script, never the JSON:

    python scripts/gen_dashboards.py            # rewrite the JSON files
    python scripts/gen_dashboards.py --check    # exit 1 if a committed file differs from the output
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conveyor.topics import STAGES

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "charts" / "conveyor" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
STAGE = f'{NS}, stage=~"$stage"'
RATE = "$__rate_interval"
# Lag is exported by every gateway replica: take one copy per partition before summing.
LAG_PARTITIONS = f'max by (namespace, group, topic, partition) (conveyor_consumer_lag{{{NS}, group=~".+-$stage"}})'
PROBE_ROUTES = 'route!~"/healthz|/readyz|/metrics"'

Panel = dict[str, Any]


# --- building blocks ---------------------------------------------------------------------------

def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(title: str, description: str, queries: list[dict[str, Any]], *, unit: str = "short",
               width: int = 8, stack: bool = False, min_zero: bool = True,
               mappings: list[Any] | None = None) -> Panel:
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    if mappings:
        defaults["mappings"] = mappings
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": queries, "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "gridPos": {"w": width, "h": 8},
    }


def stat(title: str, description: str, expr: str, *, unit: str = "short", decimals: int | None = None,
         thresholds: Iterable[tuple[float | None, str]] = ((None, "green"),), mappings: list[Any] | None = None,
         width: int = 4) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": {"mode": "absolute",
                       "steps": [{"value": value, "color": color} for value, color in thresholds]},
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value"},
        "gridPos": {"w": width, "h": 4},
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def quantiles(metric: str, by: str, selector: str, legend: str) -> list[dict[str, Any]]:
    return targets(*[
        (f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
         f"{legend} p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ])


def layout(panels: list[Panel]) -> list[Panel]:
    """Give panels ids and positions: left to right, wrapping at 24 columns, rows on their own line."""
    x = y = line_height = 0
    for index, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if panel["type"] == "row" or x + grid["w"] > 24:
            y, x, line_height = y + line_height, 0, 0
        grid["x"], grid["y"] = x, y
        panel["id"] = index
        x += grid["w"]
        line_height = max(line_height, grid["h"])
        if panel["type"] == "row":
            y, x, line_height = y + grid["h"], 0, 0
    return panels


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False}


def namespace_variable() -> dict[str, Any]:
    # allValue ".*" also matches series without a namespace label (a local Prometheus).
    query = "label_values(conveyor_http_requests_total, namespace)"
    return {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "namespace"}, "definition": query,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1, "hide": 0,
            "regex": "", "options": []}


def stage_variable() -> dict[str, Any]:
    return {"name": "stage", "label": "Stage", "type": "custom", "query": ",".join(STAGES),
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True, "multi": True, "hide": 0,
            "options": [{"selected": False, "text": s, "value": s} for s in STAGES]}


def dashboard(uid: str, title: str, description: str, panels: list[Panel],
              variables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["conveyor"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "timezone": "browser", "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "links": [{"type": "dashboards", "tags": ["conveyor"], "asDropdown": False, "title": "Conveyor",
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


# --- dashboards --------------------------------------------------------------------------------

def pipeline() -> dict[str, Any]:
    panels: list[Panel] = [
        row("Overview"),
        stat("Jobs submitted / s", "Jobs the gateway accepted (202), all kinds.",
             f"sum(rate(conveyor_jobs_submitted_total{{{NS}}}[5m]))", unit="ops", decimals=2),
        stat("Jobs completed / s", "Jobs the notifier finished.",
             f"sum(rate(conveyor_jobs_completed_total{{{NS}}}[5m]))", unit="ops", decimals=2),
        stat("Total lag", "Records waiting in the selected stages' input topics.",
             f"sum({LAG_PARTITIONS})", thresholds=((None, "green"), (100, "orange"), (1000, "red"))),
        stat("Dead letters (1h)", "Records sent to a dead-letter topic in the last hour.",
             f'sum(increase(conveyor_events_dead_lettered_total{{{STAGE}}}[1h]))', decimals=0,
             thresholds=((None, "green"), (1, "red"))),
        stat("Gateway 5xx ratio", "Share of API requests answered with a 5xx (probes excluded).",
             f'sum(rate(conveyor_http_requests_total{{{NS}, {PROBE_ROUTES}, status=~"5.."}}[5m])) '
             f'/ sum(rate(conveyor_http_requests_total{{{NS}, {PROBE_ROUTES}}}[5m]))',
             unit="percentunit", thresholds=((None, "green"), (0.01, "orange"), (0.05, "red"))),
        stat("Dependencies down", "How many dependencies (LLM endpoints, webhook hosts) have their circuit "
             "breaker open: records needing them wait, uncharged, until they are back.",
             f"count(max by (dependency) (conveyor_circuit_open{{{NS}}}) > 0) or vector(0)",
             thresholds=((None, "green"), (1, "red"))),

        row("Consumer lag"),
        timeseries("Lag by stage", "Committed offset behind log end, summed over partitions. "
                   "Exported by the gateway, so it is visible while workers are scaled to zero.",
                   targets((f"sum by (namespace, group) ({LAG_PARTITIONS})", "{{group}}")), width=12),
        timeseries("Lag by partition", "Uneven lag across partitions points at a hot key or a stuck consumer.",
                   targets((f"{LAG_PARTITIONS}", "{{group}} p{{partition}}")), width=12),

        row("Throughput"),
        timeseries("Consumed / s", "Records each stage fetched (redeliveries included).",
                   targets((f"sum by (stage) (rate(conveyor_events_consumed_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}}")), unit="ops"),
        timeseries("Produced / s", "Records each stage handed to the next topic.",
                   targets((f"sum by (stage, topic) (rate(conveyor_events_produced_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}} → {{topic}}")), unit="ops"),
        timeseries("In flight", "Records being processed right now, all replicas.",
                   targets((f"sum by (stage) (conveyor_in_flight{{{STAGE}}})", "{{stage}}"))),

        row("Processing latency"),
        timeseries("Handler time p50 / p95 / p99", "Time per record from the start of the first attempt "
                   "to its outcome, retries and backoff included.",
                   quantiles("conveyor_processing_seconds", "stage", STAGE, "{{stage}}"), unit="s", width=12),
        timeseries("Average handler time", "Mean time per record.",
                   targets((f"sum by (stage) (rate(conveyor_processing_seconds_sum{{{STAGE}}}[{RATE}])) "
                            f"/ sum by (stage) (rate(conveyor_processing_seconds_count{{{STAGE}}}[{RATE}]))",
                            "{{stage}}")), unit="s", width=12),

        row("Errors and dead letters"),
        timeseries("Failures / s by error", "Failed handler attempts, by exception class.",
                   targets((f"sum by (stage, error) (rate(conveyor_events_failed_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}} {{error}}")), unit="ops", stack=True),
        timeseries("Retries and skips / s", "Retries after transient failures; redeliveries skipped as done.",
                   targets((f"sum by (stage) (rate(conveyor_events_retried_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}} retried"),
                           (f"sum by (stage) (rate(conveyor_events_skipped_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}} skipped")), unit="ops"),
        timeseries("Dead-lettered / s", "Records moved to `<topic>.dlq`: permanent errors, attempts "
                   "exhausted, undecodable bytes. Inspect them with `conveyor dlq list <stage>`.",
                   targets((f"sum by (stage) (rate(conveyor_events_dead_lettered_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}}")), unit="ops"),
        timeseries("Failure ratio", "Failed attempts per consumed record.",
                   targets((f"sum by (stage) (rate(conveyor_events_failed_total{{{STAGE}}}[{RATE}])) "
                            f"/ sum by (stage) (rate(conveyor_events_consumed_total{{{STAGE}}}[{RATE}]))",
                            "{{stage}}")), unit="percentunit", width=24),

        row("Scaling (kube-state-metrics)"),
        timeseries("Replicas", "Pods per stage Deployment; KEDA scales them from the lag.",
                   targets((f'kube_deployment_status_replicas{{{NS}, deployment=~".+-$stage"}}', "{{deployment}}")),
                   width=12),
        timeseries("Desired vs available", "Desired replicas (set by KEDA's HPA) and replicas available.",
                   targets((f'kube_deployment_spec_replicas{{{NS}, deployment=~".+-$stage"}}',
                            "{{deployment}} desired"),
                           (f'kube_deployment_status_replicas_available{{{NS}, deployment=~".+-$stage"}}',
                            "{{deployment}} available")), width=12),

        row("Gateway"),
        timeseries("Requests / s by status", "API requests by status code (probes and /metrics excluded).",
                   targets((f"sum by (status) (rate(conveyor_http_requests_total{{{NS}, {PROBE_ROUTES}}}[{RATE}]))",
                            "{{status}}")), unit="reqps", stack=True),
        timeseries("Request latency", "Gateway latency over all API routes.",
                   quantiles("conveyor_http_request_duration_seconds", "namespace", f"{NS}, {PROBE_ROUTES}",
                             "all"), unit="s"),
        timeseries("Jobs submitted / s", "Accepted jobs, by kind (json body or upload).",
                   targets((f"sum by (kind) (rate(conveyor_jobs_submitted_total{{{NS}}}[{RATE}]))", "{{kind}}")),
                   unit="ops"),

        row("Summarizer backend (LLM)"),
        timeseries("LLM latency", "Backend call latency, successful and failed calls.",
                   quantiles("conveyor_llm_request_duration_seconds", "backend", NS, "{{backend}}"), unit="s",
                   width=12),
        timeseries("LLM calls / s by outcome", "Backend calls by outcome; 429s are rate limiting.",
                   targets((f"sum by (backend, outcome) (rate(conveyor_llm_request_duration_seconds_count{{{NS}}}"
                            f"[{RATE}]))", "{{backend}} {{outcome}}"),
                           (f"sum(rate(conveyor_llm_rate_limited_total{{{NS}}}[{RATE}]))", "429 rate limited")),
                   unit="ops", width=12),
        timeseries("Circuit breakers", "1 while a dependency's circuit breaker is open (the dependency is "
                   "down), per dependency; and the records each stage holds waiting for one.",
                   targets((f"max by (dependency) (conveyor_circuit_open{{{NS}}})", "{{dependency}}"),
                           (f"sum by (stage) (conveyor_records_waiting{{{NS}}})", "{{stage}} records waiting")),
                   unit="short", width=12),
        timeseries("LLM tokens / s", "Tokens reported by the LLM, by kind.",
                   targets((f"sum by (kind) (rate(conveyor_llm_tokens_total{{{NS}}}[{RATE}]))", "{{kind}}")),
                   unit="short", width=12),

        row("Notifier"),
        timeseries("Webhook deliveries / s", "Webhook attempts by outcome.",
                   targets((f"sum by (outcome) (rate(conveyor_webhook_deliveries_total{{{NS}}}[{RATE}]))",
                            "{{outcome}}")), unit="ops", width=12),
        timeseries("Jobs completed / s", "Jobs that reached `completed` for the first time.",
                   targets((f"sum(rate(conveyor_jobs_completed_total{{{NS}}}[{RATE}]))", "completed")),
                   unit="ops", width=12),
    ]
    return dashboard("conveyor-pipeline", "Conveyor / Pipeline",
                     "Lag, throughput, latency, errors and scaling of every Conveyor stage.",
                     panels, [datasource_variable(), namespace_variable(), stage_variable()])


def gateway() -> dict[str, Any]:
    api = f"{NS}, {PROBE_ROUTES}"
    panels: list[Panel] = [
        row("Traffic"),
        timeseries("Requests / s by route", "API requests by route (probes and /metrics excluded).",
                   targets((f"sum by (method, route) (rate(conveyor_http_requests_total{{{api}}}[{RATE}]))",
                            "{{method}} {{route}}")), unit="reqps", width=12),
        timeseries("Requests / s by status", "All requests by status code.",
                   targets((f"sum by (status) (rate(conveyor_http_requests_total{{{NS}}}[{RATE}]))", "{{status}}")),
                   unit="reqps", stack=True, width=12),
        timeseries("Error ratio", "Share of API requests answered with 4xx and with 5xx.",
                   targets((f'sum(rate(conveyor_http_requests_total{{{api}, status=~"5.."}}[{RATE}])) '
                            f'/ sum(rate(conveyor_http_requests_total{{{api}}}[{RATE}]))', "5xx"),
                           (f'sum(rate(conveyor_http_requests_total{{{api}, status=~"4.."}}[{RATE}])) '
                            f'/ sum(rate(conveyor_http_requests_total{{{api}}}[{RATE}]))', "4xx")),
                   unit="percentunit", width=12),
        timeseries("Jobs submitted / s", "Accepted jobs, by kind.",
                   targets((f"sum by (kind) (rate(conveyor_jobs_submitted_total{{{NS}}}[{RATE}]))", "{{kind}}")),
                   unit="ops", width=12),

        row("Admission"),
        timeseries("Refused / s by reason",
                   "Requests turned away before any work: unauthenticated (401), rate_limited and quota (429), "
                   "overloaded (503, the pipeline past CONVEYOR_MAX_PIPELINE_LAG).",
                   targets((f"sum by (reason) (rate(conveyor_http_refused_total{{{NS}}}[{RATE}]))", "{{reason}}")),
                   unit="reqps", stack=True, width=12),
        timeseries("Pipeline backlog", "Records waiting in the most backed-up stage, as the gateway measures it "
                   "(what CONVEYOR_MAX_PIPELINE_LAG is compared with).",
                   targets((f"max(conveyor_pipeline_backlog{{{NS}}})", "backlog")), width=12),

        row("Latency"),
        timeseries("p95 by route", "95th percentile latency per route.",
                   targets((f"histogram_quantile(0.95, sum by (route, le) "
                            f"(rate(conveyor_http_request_duration_seconds_bucket{{{api}}}[{RATE}])))",
                            "{{route}}")), unit="s", width=12),
        timeseries("p50 / p95 / p99", "Latency over all API routes.",
                   quantiles("conveyor_http_request_duration_seconds", "namespace", api, "all"), unit="s", width=12),

        row("Payloads"),
        timeseries("Accepted payload size", "Sizes of accepted documents, by route.",
                   targets(*[(f"histogram_quantile({q}, sum by (route, le) "
                              f"(rate(conveyor_http_request_payload_bytes_bucket{{{NS}}}[{RATE}])))",
                              f"{{{{route}}}} p{int(q * 100)}") for q in (0.5, 0.95)]),
                   unit="bytes", width=12),
        timeseries("Ingest bytes / s", "Accepted payload bytes per second.",
                   targets((f"sum by (route) (rate(conveyor_http_request_payload_bytes_sum{{{NS}}}[{RATE}]))",
                            "{{route}}")), unit="Bps", width=12),
    ]
    return dashboard("conveyor-gateway", "Conveyor / Gateway",
                     "Requests, status codes, latency and payloads of the Conveyor gateway.",
                     panels, [datasource_variable(), namespace_variable()])


DASHBOARDS = {"conveyor-pipeline.json": pipeline, "conveyor-gateway.json": gateway}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a committed dashboard differs from the generated one")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where the JSON files live (default {OUT_DIR})")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        stale = [name for name, text in rendered.items()
                 if not (args.out_dir / name).is_file() or (args.out_dir / name).read_text() != text]
        for name in stale:
            print(f"stale: {args.out_dir / name} (run python scripts/gen_dashboards.py)", file=sys.stderr)
        if not stale:
            print(f"{len(rendered)} dashboard(s) up to date in {args.out_dir}")
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out_dir / name).write_text(text)
        print(f"wrote {args.out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

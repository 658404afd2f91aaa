"""Prometheus metrics of the operator (`conveyor_operator_` prefix), served on CONVEYOR_OPERATOR_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter(
    "conveyor_operator_reconciles_total",
    "Pipeline reconciles, by trigger (create, update, resume, timer, delete) and outcome.",
    ["trigger", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "conveyor_operator_reconcile_duration_seconds", "Time one Pipeline reconcile took.", ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OBJECT_CHANGES = Counter(
    "conveyor_operator_object_changes_total",
    "Owned objects the operator created, patched or deleted (patches after creation mean drift).",
    ["kind", "action"],
)

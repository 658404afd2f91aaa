"""The Pipeline's `.status`, computed from what a reconcile observed. Pure functions.

Conditions follow the Kubernetes convention (type, status, reason, message, observedGeneration,
lastTransitionTime); `lastTransitionTime` only moves when a condition's status flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Problem:
    """Something that keeps the pipeline from its spec; shown as the Degraded condition."""

    reason: str
    message: str


@dataclass(frozen=True)
class StageObservation:
    name: str
    input_topic: str
    consumer_group: str
    partitions: int | None
    replicas: int | None
    ready_replicas: int
    deployed: bool
    lag: int | None

    @property
    def ready(self) -> bool:
        """Deployed and as many ready workers as currently wanted (0 wanted = idle, scaled to zero)."""
        return self.deployed and self.ready_replicas >= (self.replicas if self.replicas is not None else 1)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "reason": reason,
                                 "message": message}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _stamp(conditions: list[dict[str, Any]], previous: Sequence[Mapping[str, Any]], at: str) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    for condition in conditions:
        old = before.get(condition["type"])
        unchanged = old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime")
        condition["lastTransitionTime"] = old["lastTransitionTime"] if unchanged else at
    return conditions


def build_status(*, generation: int | None, stages: Sequence[StageObservation], problems: Sequence[Problem],
                 previous: Mapping[str, Any] | None, at: str | None = None) -> dict[str, Any]:
    """Status of a reconciled pipeline: phase, per-stage readiness and lag, Ready/Degraded conditions."""
    ready = [s for s in stages if s.ready]
    lags = [s.lag for s in stages]
    if problems:
        phase, reason = "Degraded", problems[0].reason
        message = "; ".join(p.message for p in problems)
        conditions = [_condition("Ready", False, reason, message, generation),
                      _condition("Degraded", True, reason, message, generation)]
    elif len(ready) < len(stages):
        waiting = ", ".join(f"{s.name} ({s.ready_replicas}/{s.replicas if s.replicas is not None else 1} ready)"
                            if s.deployed else f"{s.name} (not deployed)" for s in stages if not s.ready)
        phase = "Progressing"
        conditions = [_condition("Ready", False, "StagesNotReady", f"waiting for {waiting}", generation),
                      _condition("Degraded", False, "AsExpected", "the spec is applied", generation)]
    else:
        phase = "Ready"
        conditions = [_condition("Ready", True, "AllStagesReady", f"{len(stages)}/{len(stages)} stages ready",
                                 generation),
                      _condition("Degraded", False, "AsExpected", "the spec is applied", generation)]
    stage_rows = []
    for s in stages:
        row: dict[str, Any] = {"name": s.name, "inputTopic": s.input_topic, "consumerGroup": s.consumer_group,
                               "readyReplicas": s.ready_replicas, "ready": s.ready}
        if s.partitions is not None:
            row["partitions"] = s.partitions
        if s.replicas is not None:
            row["replicas"] = s.replicas
        if s.lag is not None:
            row["lag"] = s.lag
        stage_rows.append(row)
    return {
        "phase": phase,
        "observedGeneration": generation,
        "readyStages": f"{len(ready)}/{len(stages)}",
        "totalLag": sum(lag for lag in lags if lag is not None) if all(lag is not None for lag in lags) else None,
        "stages": stage_rows,
        "conditions": _stamp(conditions, (previous or {}).get("conditions") or [], at or now()),
    }


def invalid_status(*, generation: int | None, message: str, previous: Mapping[str, Any] | None,
                   at: str | None = None) -> dict[str, Any]:
    """Status of a spec that cannot be applied; whatever was deployed before keeps running untouched."""
    conditions = [_condition("Ready", False, "InvalidSpec", message, generation),
                  _condition("Degraded", True, "InvalidSpec", message, generation)]
    return {"phase": "Invalid", "observedGeneration": generation,
            "conditions": _stamp(conditions, (previous or {}).get("conditions") or [], at or now())}


def changed_fields(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `new` that differs from `previous` (a merge patch for `.status`; None removes a key)."""
    previous = previous or {}
    return {k: v for k, v in new.items() if previous.get(k) != v and not (v is None and k not in previous)}

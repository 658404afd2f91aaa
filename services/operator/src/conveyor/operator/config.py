"""Operator settings, read once from `CONVEYOR_OPERATOR_*` environment variables.

Kafka security (CONVEYOR_SECURITY_PROTOCOL, CONVEYOR_SASL_*) and logging (CONVEYOR_LOG_LEVEL) come
from the shared `conveyor.settings.Settings`, so the operator connects to brokers like every worker.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_OPERATOR_", extra="ignore")

    namespaces: str = Field(
        "", description="Comma-separated namespaces to watch; empty = every namespace (needs a ClusterRole)."
    )
    reconcile_seconds: float = Field(
        30.0, gt=0, description="Interval of the level-based reconcile: repairs drift, refreshes status and lag."
    )
    kafka_timeout_seconds: float = Field(10.0, gt=0, description="Limit of one Kafka admin or lag round trip.")
    retry_seconds: float = Field(10.0, gt=0, description="Backoff before a failed create/update/delete is retried.")
    health_port: int = Field(8080, ge=0, description="Liveness endpoint /healthz; 0 = off.")
    metrics_port: int = Field(9100, ge=0, description="Prometheus /metrics; 0 = off.")

    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]

"""The Pipeline spec, parsed once into typed, validated models.

The API server already enforces the CRD schema; this module checks it again (objects may come from
older schema versions or from a server that does not run the CEL rules) and resolves the defaults
that depend on other fields: topic names, consumer groups, maxReplicas and the worker command.
Every problem names its field, e.g. `spec.stages[1].maxReplicas: ...`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from conveyor.topics import consumer_group, input_topic

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"


class SpecError(ValueError):
    """The spec cannot be reconciled; each problem reads `<field>: <what is wrong>`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ClusterRef(_Model):
    name: str = Field(min_length=1)
    namespace: str | None = None


class KafkaSpec(_Model):
    bootstrap_servers: str = Field(min_length=1)
    topic_prefix: str = Field("conveyor", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    mode: Literal["redpanda", "external"] = "external"
    cluster_ref: ClusterRef | None = None
    replication_factor: int | None = Field(None, ge=1)
    keda_authentication_ref: str | None = None


class SummarizerSpec(_Model):
    backend: Literal["textrank", "openai"] | None = None
    openai_base_url: str | None = None
    openai_model: str | None = None


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


class StageSpec(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    input_topic: str | None = Field(None, pattern=TOPIC_NAME)
    partitions: int = Field(6, ge=1, le=1000)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    lag_threshold: int = Field(10, ge=1)
    activation_lag_threshold: int = Field(0, ge=0)
    resources: dict[str, dict[str, int | str]] | None = None
    env: tuple[EnvVar, ...] = ()
    summarizer: SummarizerSpec | None = None

    @property
    def replicas_ceiling(self) -> int:
        """maxReplicas, defaulting to the partition count (more consumers than partitions would idle)."""
        return self.max_replicas if self.max_replicas is not None else self.partitions

    def container_command(self) -> tuple[list[str], list[str]]:
        """(command, args) of the worker container; default `conveyor-<name>`, the entry point
        of every Conveyor stage image."""
        command = list(self.command) if self.command is not None else [f"conveyor-{self.name}"]
        return command, list(self.args or ())


class PipelineSpec(_Model):
    kafka: KafkaSpec
    delete_topics_on_delete: bool = False
    env_from: tuple[dict[str, Any], ...] = ()
    stages: tuple[StageSpec, ...] = Field(min_length=1, max_length=16)

    def input_topic(self, stage: StageSpec) -> str:
        return stage.input_topic or input_topic(stage.name, self.kafka.topic_prefix)

    def dlq_topic(self, stage: StageSpec) -> str:
        return f"{self.input_topic(stage)}.dlq"

    def consumer_group(self, stage: StageSpec) -> str:
        return consumer_group(stage.name, self.kafka.topic_prefix)

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _cross_field_problems(spec: PipelineSpec) -> list[str]:
    problems: list[str] = []
    if spec.kafka.mode == "redpanda" and spec.kafka.cluster_ref is None:
        problems.append("spec.kafka.clusterRef: required when spec.kafka.mode is redpanda "
                        "(the Redpanda cluster resource the Topic resources point at)")
    seen_names: dict[str, int] = {}
    seen_topics: dict[str, int] = {}
    for index, stage in enumerate(spec.stages):
        at = f"spec.stages[{index}]"
        if stage.name in seen_names:
            problems.append(f"{at}.name: stage {stage.name!r} is already defined at spec.stages[{seen_names[stage.name]}]")
        seen_names.setdefault(stage.name, index)
        topic = spec.input_topic(stage)
        if topic in seen_topics:
            problems.append(f"{at}.inputTopic: topic {topic!r} is already the input of spec.stages[{seen_topics[topic]}]")
        seen_topics.setdefault(topic, index)
        if stage.max_replicas is not None and stage.max_replicas > stage.partitions:
            problems.append(
                f"{at}.maxReplicas: {stage.max_replicas} exceeds {at}.partitions ({stage.partitions}) "
                f"for stage {stage.name!r}; a consumer group cannot use more consumers than partitions, "
                f"so set maxReplicas <= {stage.partitions} or raise partitions"
            )
        if stage.min_replicas > stage.replicas_ceiling:
            problems.append(
                f"{at}.minReplicas: {stage.min_replicas} exceeds the stage's maxReplicas ({stage.replicas_ceiling})"
            )
    return problems


def parse_spec(raw: Mapping[str, Any] | None) -> PipelineSpec:
    """Validate a Pipeline's `.spec`; raises SpecError listing every problem found."""
    try:
        spec = PipelineSpec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise SpecError([f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    problems = _cross_field_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec

"""The Pipeline spec: the one description of a pipeline, parsed into typed, validated models.

The operator reconciles it on Kubernetes and `conveyor up -f` runs it on one machine; both give
every stage the same bindings (`bindings_env`): its input, output and dead-letter topics, the stage
that reads its output, its consumer group and where failure notices go.

The API server already enforces the CRD schema; this module checks it again (objects may come from
older schema versions, from a server that does not run the CEL rules, or from a file) and resolves
the defaults that depend on other fields: topic names, consumer groups, maxReplicas and the worker
command. Every problem names its field, e.g. `spec.stages[1].maxReplicas: ...`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from conveyor.topics import NOTIFIER, consumer_group, input_topic

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
HANDLER = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
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
    output_topic: str | None = Field(None, pattern=TOPIC_NAME)
    handler: str | None = Field(None, pattern=HANDLER, max_length=200)
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
        if self.command is not None:
            return list(self.command), list(self.args or ())
        if self.handler is not None:
            return ["conveyor-stage", self.name, self.handler], list(self.args or ())
        return [f"conveyor-{self.name}"], list(self.args or ())


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

    def following(self, stage: StageSpec) -> StageSpec | None:
        """The stage that reads this one's outputs: the one whose input is its outputTopic, else
        the next in the list; None for the last stage."""
        later = self.stages[self.stages.index(stage) + 1:]
        if stage.output_topic is not None:
            return next((s for s in later if self.input_topic(s) == stage.output_topic), None)
        return later[0] if later else None

    def bindings_env(self, stage: StageSpec) -> dict[str, str]:
        """The `CONVEYOR_*` variables that bind one stage's worker into this pipeline."""
        following = self.following(stage)
        notifier = next((s for s in self.stages if s.name == NOTIFIER), None)
        return {
            "CONVEYOR_STAGE": stage.name,
            "CONVEYOR_TOPIC_PREFIX": self.kafka.topic_prefix,
            "CONVEYOR_PIPELINE_STAGES": ",".join(s.name for s in self.stages),
            "CONVEYOR_INPUT_TOPIC": self.input_topic(stage),
            # Empty: the last stage, whose outputs complete the job.
            "CONVEYOR_OUTPUT_TOPIC": self.input_topic(following) if following else "",
            "CONVEYOR_NEXT_STAGE": following.name if following else "",
            "CONVEYOR_DLQ_TOPIC": self.dlq_topic(stage),
            "CONVEYOR_CONSUMER_GROUP": self.consumer_group(stage),
            "CONVEYOR_NOTIFY_TOPIC": self.input_topic(notifier) if notifier and notifier is not stage else "",
        }

    def stage_env(self, stage: StageSpec) -> dict[str, str]:
        """What the spec sets for one stage's worker, on any runtime: its bindings and its
        summarizer options (the stage's own `env` list comes after, and wins)."""
        env = self.bindings_env(stage)
        if stage.summarizer is not None:
            optional = {
                "CONVEYOR_SUMMARIZER_BACKEND": stage.summarizer.backend,
                "CONVEYOR_OPENAI_BASE_URL": stage.summarizer.openai_base_url,
                "CONVEYOR_OPENAI_MODEL": stage.summarizer.openai_model,
            }
            env |= {k: v for k, v in optional.items() if v is not None}
        return env

    def topics(self) -> list[str]:
        """Every stage's input and dead-letter topic."""
        return [t for s in self.stages for t in (self.input_topic(s), self.dlq_topic(s))]


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
        if index == 0 and topic != input_topic(stage.name, spec.kafka.topic_prefix):
            problems.append(f"{at}.inputTopic: the first stage reads what the gateway sends, "
                            f"{input_topic(stage.name, spec.kafka.topic_prefix)!r}; remove inputTopic")
        if topic in seen_topics:
            problems.append(f"{at}.inputTopic: topic {topic!r} is already the input of spec.stages[{seen_topics[topic]}]")
        seen_topics.setdefault(topic, index)
        if stage.output_topic is not None and spec.following(stage) is None:
            later = [spec.input_topic(s) for s in spec.stages[index + 1:]]
            problems.append(f"{at}.outputTopic: {stage.output_topic!r} is not the input of a later stage "
                            f"({', '.join(later) or 'none follows'}); remove it to write to the next stage")
        if stage.handler is not None and stage.command is not None:
            problems.append(f"{at}.handler: a stage runs its handler or its command, not both; remove one")
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

"""Topic and consumer-group names, and the bindings that chain a pipeline's stages together.

A pipeline is a list of stages in data-flow order (`CONVEYOR_PIPELINE_STAGES`, by default
extractor -> summarizer -> notifier). Each stage reads one input topic and writes its outputs to the
next stage's input; the last one writes nothing, and a job completes when it is done. The Pipeline
resource (`conveyor.pipeline`) sets every binding explicitly; without it they are derived from the
names here, which the chart, the operator and `conveyor topics` all use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.settings import Settings

DEFAULT_STAGES: tuple[str, ...] = ("extractor", "summarizer", "notifier")
STAGES = DEFAULT_STAGES  # the default pipeline's stages
# Every stage Conveyor ships, each its own service and image; the embedder is optional.
BUILT_IN_STAGES: tuple[str, ...] = ("extractor", "embedder", "summarizer", "notifier")
NOTIFIER = "notifier"  # the stage that tells callbacks how their jobs ended

_INPUT_SUFFIX = {"extractor": "extract", "summarizer": "summarize", "notifier": "notify"}


def input_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}.{_INPUT_SUFFIX.get(stage, stage)}"


def dlq_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{input_topic(stage, prefix)}.dlq"


def consumer_group(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}-{stage}"


class BindingError(ValueError):
    """A stage's bindings contradict its pipeline; the message names the variable to fix."""


@dataclass(frozen=True)
class Bindings:
    """Where one stage reads, writes and dead-letters, as its worker uses them."""

    stage: str
    input_topic: str
    dlq_topic: str
    consumer_group: str
    output_topic: str | None  # None: the last stage
    next_stage: str | None  # the stage that reads `output_topic`
    notify_topic: str | None  # where failure notices go; None: nobody is told

    @property
    def last(self) -> bool:
        return self.output_topic is None


def stage_bindings(stage: str, settings: Settings) -> Bindings:
    """The stage's bindings: the `CONVEYOR_*_TOPIC`, `_NEXT_STAGE` and `_CONSUMER_GROUP` values
    set for it, else the names derived from its place in `CONVEYOR_PIPELINE_STAGES`."""
    prefix, stages = settings.topic_prefix, list(settings.pipeline_stages)
    if stage not in stages:
        raise BindingError(f"stage {stage!r} is not in CONVEYOR_PIPELINE_STAGES ({','.join(stages)}): "
                           "add it where it belongs in the data flow")
    topic = settings.input_topic or input_topic(stage, prefix)
    following = stages[stages.index(stage) + 1] if stage in stages[:-1] else None
    if settings.output_topic == "":  # said explicitly: the last stage, whatever follows it in the list
        output, following = None, None
    elif settings.output_topic is not None:
        output, following = settings.output_topic, settings.next_stage or following
        if following is None:
            raise BindingError(f"CONVEYOR_OUTPUT_TOPIC is set for stage {stage!r}, but nothing says which stage "
                               "reads it: set CONVEYOR_NEXT_STAGE")
    else:
        following = settings.next_stage or following
        output = input_topic(following, prefix) if following else None
    if settings.notify_topic is not None:
        notify = settings.notify_topic or None
    else:
        notify = input_topic(NOTIFIER, prefix) if NOTIFIER in stages and stage != NOTIFIER else None
    return Bindings(stage=stage, input_topic=topic, dlq_topic=settings.dlq_topic or f"{topic}.dlq",
                    consumer_group=settings.consumer_group or consumer_group(stage, prefix),
                    output_topic=output, next_stage=following, notify_topic=notify)


def all_topics(prefix: str = "conveyor", stages: tuple[str, ...] | list[str] = DEFAULT_STAGES) -> list[str]:
    return [t for s in stages for t in (input_topic(s, prefix), dlq_topic(s, prefix))]

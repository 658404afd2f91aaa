"""Topic and consumer-group names: one input topic and one dead-letter topic per stage.

Data flows one way: gateway -> extract -> summarize -> notify. The chart, the operator and
`conveyor topics` all derive names from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.settings import Settings

STAGES: tuple[str, ...] = ("extractor", "summarizer", "notifier")

_INPUT_SUFFIX = {"extractor": "extract", "summarizer": "summarize", "notifier": "notify"}


def input_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}.{_INPUT_SUFFIX.get(stage, stage)}"


def dlq_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{input_topic(stage, prefix)}.dlq"


def consumer_group(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}-{stage}"


def stage_bindings(stage: str, settings: Settings) -> tuple[str, str, str]:
    """The input topic, dead-letter topic and consumer group a stage's worker uses: its bindings
    (`CONVEYOR_INPUT_TOPIC`, `_DLQ_TOPIC`, `_CONSUMER_GROUP`, set per stage by the operator), else
    the names derived from the stage and the prefix."""
    topic = settings.input_topic or input_topic(stage, settings.topic_prefix)
    return topic, settings.dlq_topic or f"{topic}.dlq", settings.consumer_group or consumer_group(stage, settings.topic_prefix)


def next_stage(stage: str) -> str | None:
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def all_topics(prefix: str = "conveyor") -> list[str]:
    return [t for s in STAGES for t in (input_topic(s, prefix), dlq_topic(s, prefix))]

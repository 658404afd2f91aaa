"""Topic and consumer-group names: one input topic and one dead-letter topic per stage.

Data flows one way: gateway -> extract -> summarize -> notify. The chart, the operator and
`conveyor topics` all derive names from here.
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("extractor", "summarizer", "notifier")

_INPUT_SUFFIX = {"extractor": "extract", "summarizer": "summarize", "notifier": "notify"}


def input_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}.{_INPUT_SUFFIX.get(stage, stage)}"


def dlq_topic(stage: str, prefix: str = "conveyor") -> str:
    return f"{input_topic(stage, prefix)}.dlq"


def consumer_group(stage: str, prefix: str = "conveyor") -> str:
    return f"{prefix}-{stage}"


def next_stage(stage: str) -> str | None:
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def all_topics(prefix: str = "conveyor") -> list[str]:
    return [t for s in STAGES for t in (input_topic(s, prefix), dlq_topic(s, prefix))]

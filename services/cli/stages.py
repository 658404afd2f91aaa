"""Which module builds each worker stage (imported lazily: a worker loads only its own code)."""

from __future__ import annotations

import importlib

from conveyor.worker import StageFactory

STAGE_MODULES = {
    "extractor": "conveyor.extractor.handler",
    "summarizer": "conveyor.summarizer.handler",
    "notifier": "conveyor.notifier.handler",
}


def stage_factory(name: str) -> StageFactory:
    return importlib.import_module(STAGE_MODULES[name]).build_stage

"""Stages written by users: a plain async function `event -> output event | None`, named as
`package.module:function`, run by the same stage loop as the built-in stages (at-least-once
commits, retries, dead letters, per-job ordering, deadlines, metrics, traces and probes).
`conveyor-stage NAME MODULE:FUNCTION` runs one worker of such a stage (what a stage image runs;
`conveyor worker NAME --handler MODULE:FUNCTION` is the same).

The function raises `conveyor.errors.PermanentError` for a record that can never succeed (it is
dead-lettered at once) and any other exception for one worth retrying. Its module is imported from
the current directory or `PYTHONPATH`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from conveyor.kafka.stage import Handler, Stage
from conveyor.settings import Settings
from conveyor.worker import main as run_stage
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore

HANDLER_REFERENCE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*")


class HandlerNotFound(Exception):
    """The handler reference names nothing usable; the message says what to fix."""


def load_handler(reference: str) -> Handler:
    """Import `package.module:function` and check that it is an async function of one event."""
    if not HANDLER_REFERENCE.fullmatch(reference):
        raise HandlerNotFound(f"{reference!r} is not package.module:function")
    module_name, function_name = reference.split(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the user's own modules first
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerNotFound(f"module {exc.name!r} was not found (looked in the current directory and "
                              "PYTHONPATH)") from None
    handler = getattr(module, function_name, None)
    if handler is None:
        raise HandlerNotFound(f"module {module_name!r} has no {function_name!r}")
    if not inspect.iscoroutinefunction(handler):
        raise HandlerNotFound(f"{reference} must be an async function (async def {function_name}(event): ...)")
    return handler


def custom_stage(name: str, handler: Handler):  # type: ignore[no-untyped-def]
    """The stage factory `conveyor.worker` runs for a user's handler. Redeliveries of a record the
    stage finished are skipped, as in the built-in stages with outside effects."""

    def build(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
        return Stage(name, handler, skip_done=True)

    return build


def run(name: str, reference: str, *, program: str) -> int:
    """Run one worker of the stage until SIGTERM; 2 with one line on stderr when the handler
    cannot be loaded."""
    try:
        handler = load_handler(reference)
    except HandlerNotFound as exc:
        print(f"{program}: --handler {reference}: {exc}", file=sys.stderr)
        return 2
    return run_stage(name, custom_stage(name, handler))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor-stage", description="Run one worker of a stage written as an "
                                     "async Python function. Its bindings come from CONVEYOR_* variables.")
    parser.add_argument("stage", help="the stage's name in its pipeline")
    parser.add_argument("handler", metavar="MODULE:FUNCTION", help="e.g. mystages.redact:handle")
    args = parser.parse_args(argv)
    return run(args.stage, args.handler, program="conveyor-stage")


if __name__ == "__main__":
    raise SystemExit(main())

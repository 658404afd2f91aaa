"""Process logging: JSON lines for log collectors, or a plain human format for terminals.

Every record gets the service name and, inside a traced span, the trace id; pass the job id as an
extra (`log.info("...", extra={"job_id": job_id})`) and it becomes a field of its own.
"""

from __future__ import annotations

import json as jsonlib
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from conveyor.tracing import current_trace_id

__all__ = ["JsonFormatter", "PlainFormatter", "RepeatGate", "setup_logging"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_CONTEXT = ("job_id", "trace_id")


class ContextFilter(logging.Filter):
    """Adds `service` and the current `trace_id` (when inside a recorded span) to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if getattr(record, "trace_id", None) is None:
            record.trace_id = current_trace_id()
        return True


class RepeatGate(logging.Filter):
    """One line per kind of message from the Kafka client, not one per retry: while a broker is
    down it logs the same error every ~100 ms per connection. A message (by logger, level and
    template) passes once per `window` seconds; the next one to pass says how many were held back."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes, self.window, self.clock = prefixes, window, clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (passed at, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        passed_at, held = self._seen.get(key, (float("-inf"), 0))
        if now - passed_at < self.window:
            self._seen[key] = (passed_at, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded: forget the oldest kinds
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                del self._seen[old]
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.window:g}s were not logged)"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, service, job_id, trace_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`2024-05-01 12:00:00,123 INFO    conveyor.kafka.stage: message [job=... trace=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{key.removesuffix('_id')}={value}"
            for key in _CONTEXT if (value := getattr(record, key, None)) is not None
        )
        if not context:
            return text
        first, newline, rest = text.partition("\n")  # keep tracebacks below the context
        return f"{first} [{context}]{newline}{rest}"


def _level(level: str) -> int:
    name = str(level).strip().upper()
    if name.isdigit():
        return int(name)
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(
            f"CONVEYOR_LOG_LEVEL={level!r}: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return value


def setup_logging(level: str, *, json: bool, service: str, stream: TextIO | None = None) -> None:
    """Send every logger's records to stderr (or `stream`) at `level`; calling it again replaces the setup."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else PlainFormatter())
    handler.addFilter(RepeatGate())
    handler.addFilter(ContextFilter(service))
    handler._conveyor = True  # type: ignore[attr-defined]  # marks the handler this module owns
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_conveyor", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(_level(level))
    # httpx logs every request with its full URL, which may carry credentials or tokens.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, _level(level)))

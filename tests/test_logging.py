"""Log lines: JSON for collectors with job and trace ids, plain text for terminals."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from conveyor import tracing
from conveyor.logging import RepeatGate, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    tracing.shutdown_tracing()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_carries_job_id_and_trace_id() -> None:
    spans = tracing.install_in_memory_exporter()
    out = io.StringIO()
    setup_logging("INFO", json=True, service="extractor", stream=out)
    with tracing.stage_span("extractor", job_id="job-42", headers=None, topic="conveyor.extract", partition=1,
                            offset=7):
        logging.getLogger("conveyor.kafka.stage").info("extracted %d chars", 1200, extra={"job_id": "job-42"})
    (line,) = lines(out)
    entry = json.loads(line)
    (span,) = spans.get_finished_spans()
    assert entry["trace_id"] == format(span.context.trace_id, "032x")
    assert entry["job_id"] == "job-42"
    assert entry["message"] == "extracted 1200 chars"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "conveyor.kafka.stage"
    assert entry["service"] == "extractor"
    assert entry["timestamp"].endswith("+00:00")
    assert set(entry) == {"timestamp", "level", "logger", "message", "service", "job_id", "trace_id"}


def test_json_line_outside_a_trace_has_no_trace_id() -> None:
    out = io.StringIO()
    setup_logging("debug", json=True, service="gateway", stream=out)
    logging.getLogger("conveyor.gateway").debug("ready", extra={"port": 8000})
    entry = json.loads(lines(out)[0])
    assert "trace_id" not in entry and "job_id" not in entry
    assert entry["port"] == 8000
    assert entry["level"] == "DEBUG"


def test_json_exception_stays_on_one_line() -> None:
    out = io.StringIO()
    setup_logging("INFO", json=True, service="notifier", stream=out)
    try:
        raise ValueError("bad callback")
    except ValueError:
        logging.getLogger("conveyor.notifier").exception("webhook failed", extra={"job_id": "j9"})
    (line,) = lines(out)
    entry = json.loads(line)
    assert entry["job_id"] == "j9"
    assert "ValueError: bad callback" in entry["exception"]


def test_level_filters_and_setup_replaces_itself() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", json=True, service="gateway", stream=first)
    setup_logging("WARNING", json=True, service="gateway", stream=second)
    log = logging.getLogger("conveyor.test")
    log.info("hidden")
    log.warning("shown")
    assert lines(first) == []
    assert [json.loads(x)["message"] for x in lines(second)] == ["shown"]


def test_plain_format_for_humans() -> None:
    tracing.install_in_memory_exporter()
    out = io.StringIO()
    setup_logging("INFO", json=False, service="summarizer", stream=out)
    log = logging.getLogger("conveyor.summarizer")
    log.info("no context")
    with tracing.produce_span("conveyor.notify", job_id="job-1"):
        trace_id = tracing.current_trace_id()
        log.info("summarized", extra={"job_id": "job-1"})
    plain, contextual = lines(out)
    assert plain.endswith("INFO    conveyor.summarizer: no context")
    assert contextual.endswith(f"conveyor.summarizer: summarized [job=job-1 trace={trace_id}]")


def test_bad_level_names_the_setting() -> None:
    with pytest.raises(ValueError, match="CONVEYOR_LOG_LEVEL"):
        setup_logging("LOUD", json=False, service="gateway", stream=io.StringIO())


def test_the_kafka_clients_retries_log_once_a_minute_and_ours_always() -> None:
    stream = io.StringIO()
    setup_logging("INFO", json=False, service="extractor", stream=stream)
    kafka, ours = logging.getLogger("aiokafka.conn"), logging.getLogger("conveyor.kafka.stage")
    for _ in range(1000):  # a broker down: the client's error on every retry
        kafka.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
    for job in range(3):
        ours.warning("dead-lettered %s", job)
    assert [line.split(": ", 1)[1] for line in lines(stream)] == [
        "Unable connect to node with id 1: Connect call failed",
        "dead-lettered 0", "dead-lettered 1", "dead-lettered 2",
    ]


def test_a_held_back_message_passes_again_after_its_window_with_the_count() -> None:
    now = [0.0]
    gate = RepeatGate(window=60, clock=lambda: now[0])
    record = lambda: logging.LogRecord("aiokafka", logging.ERROR, "", 0, "lost %s", ("x",), None)  # noqa: E731
    assert gate.filter(record()) and not gate.filter(record()) and not gate.filter(record())
    now[0] = 61
    again = record()
    assert gate.filter(again) and again.getMessage() == "lost x (2 more like it in the last 60s were not logged)"

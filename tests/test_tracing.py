"""Tracing: one trace per job across the gateway and every stage, carried in Kafka headers."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import tracing

OTEL_VARS = (
    "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown_tracing()
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return tracing.install_in_memory_exporter()


def in_new_process(fn: Callable[[], list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """Run one hop with a fresh context, as another process would: only the headers cross over."""
    return contextvars.Context().run(fn)


def consume_and_forward(stage: str, topic: str, headers: list[tuple[str, bytes]], next_topic: str | None,
                        ) -> Callable[[], list[tuple[str, bytes]]]:
    def hop() -> list[tuple[str, bytes]]:
        with tracing.stage_span(stage, job_id="job-1", headers=headers, topic=topic, partition=2, offset=41):
            if next_topic is None:
                return []
            with tracing.produce_span(next_topic, job_id="job-1"):
                envelope_trace = tracing.trace_dict()
                out = tracing.kafka_headers()
                assert {k: v.decode() for k, v in out} == envelope_trace
                return out
    return hop


def run_pipeline() -> None:
    """gateway request -> extract -> extractor -> summarize -> summarizer -> notify -> notifier."""
    def gateway() -> list[tuple[str, bytes]]:
        with tracing.request_span("POST", "/submit"):
            with tracing.produce_span("conveyor.extract", job_id="job-1"):
                return tracing.kafka_headers()

    headers = in_new_process(gateway)
    headers = in_new_process(consume_and_forward("extractor", "conveyor.extract", headers, "conveyor.summarize"))
    headers = in_new_process(consume_and_forward("summarizer", "conveyor.summarize", headers, "conveyor.notify"))
    in_new_process(consume_and_forward("notifier", "conveyor.notify", headers, None))


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    names = [s.name for s in finished]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in finished}


def test_one_trace_from_request_to_notifier(spans: InMemorySpanExporter) -> None:
    run_pipeline()
    named = by_name(spans.get_finished_spans())
    assert set(named) == {
        "POST /submit", "conveyor.extract publish", "extractor process", "conveyor.summarize publish",
        "summarizer process", "conveyor.notify publish", "notifier process",
    }
    assert len({s.context.trace_id for s in named.values()}) == 1

    chain = ["POST /submit", "conveyor.extract publish", "extractor process", "conveyor.summarize publish",
             "summarizer process", "conveyor.notify publish", "notifier process"]
    assert named["POST /submit"].parent is None
    for parent, child in zip(chain, chain[1:]):
        assert named[child].parent is not None
        assert named[child].parent.span_id == named[parent].context.span_id, (child, parent)
    # The stage spans' parents arrived through headers, i.e. from another process.
    for stage in ("extractor", "summarizer", "notifier"):
        assert named[f"{stage} process"].parent.is_remote

    kinds = {name: span.kind for name, span in named.items()}
    assert kinds["POST /submit"] == SpanKind.SERVER
    assert {kinds[n] for n in chain if n.endswith(" publish")} == {SpanKind.PRODUCER}
    assert {kinds[n] for n in chain if n.endswith(" process")} == {SpanKind.CONSUMER}


def test_stage_span_attributes(spans: InMemorySpanExporter) -> None:
    run_pipeline()
    named = by_name(spans.get_finished_spans())
    assert dict(named["summarizer process"].attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "conveyor.summarize",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.message.offset": 41,
        "messaging.consumer.group.name": "conveyor-summarizer",
        "conveyor.stage": "summarizer",
        "conveyor.job_id": "job-1",
    }
    assert dict(named["conveyor.notify publish"].attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": "conveyor.notify",
        "conveyor.job_id": "job-1",
    }
    assert dict(named["POST /submit"].attributes) == {"http.request.method": "POST", "http.route": "/submit"}
    assert named["POST /submit"].resource.attributes["service.name"] == "conveyor-test"


def test_consumer_group_follows_the_topic_prefix(spans: InMemorySpanExporter) -> None:
    with tracing.stage_span("notifier", job_id=None, headers=None, topic="acme.docs.notify", partition=0,
                            offset=0):
        pass
    (span,) = spans.get_finished_spans()
    assert span.attributes["messaging.consumer.group.name"] == "acme.docs-notifier"
    assert "conveyor.job_id" not in span.attributes


def test_failing_stage_records_the_exception(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError, match="backend down"):
        with tracing.stage_span("summarizer", job_id="job-2", headers=[], topic="conveyor.summarize",
                                partition=0, offset=1):
            raise RuntimeError("backend down")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert "RuntimeError" in (span.status.description or "")
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "backend down"


def test_record_without_headers_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    with tracing.request_span("GET", "/unrelated"):
        with tracing.stage_span("extractor", job_id="job-3", headers=[("other", b"x")], topic="conveyor.extract",
                                partition=0, offset=0):
            inner = tracing.current_trace_id()
    named = by_name(spans.get_finished_spans())
    assert named["extractor process"].parent is None
    assert inner == format(named["extractor process"].context.trace_id, "032x")
    assert named["extractor process"].context.trace_id != named["GET /unrelated"].context.trace_id


def test_headers_and_ids_outside_a_span(spans: InMemorySpanExporter) -> None:
    assert tracing.kafka_headers() == []
    assert tracing.trace_dict() == {}
    assert tracing.current_trace_id() is None
    with tracing.produce_span("conveyor.extract", job_id="job-4") as span:
        (key, value), = tracing.kafka_headers()
        assert key == "traceparent"
        trace_hex = format(span.get_span_context().trace_id, "032x")
        span_hex = format(span.get_span_context().span_id, "016x")
        assert value.decode().startswith(f"00-{trace_hex}-{span_hex}-")
        assert tracing.current_trace_id() == trace_hex


def test_in_memory_exporter_can_be_installed_twice() -> None:
    first = tracing.install_in_memory_exporter()
    with tracing.produce_span("conveyor.extract", job_id="a"):
        pass
    second = tracing.install_in_memory_exporter()
    assert second.get_finished_spans() == ()
    with tracing.produce_span("conveyor.notify", job_id="b"):
        pass
    assert [s.name for s in second.get_finished_spans()] == ["conveyor.notify publish"]
    assert second is first
    # After a shutdown a new install records again.
    tracing.shutdown_tracing()
    third = tracing.install_in_memory_exporter()
    with tracing.produce_span("conveyor.summarize", job_id="c"):
        pass
    assert [s.name for s in third.get_finished_spans()] == ["conveyor.summarize publish"]


def test_tracing_off_is_a_no_op() -> None:
    tracing.setup_tracing("extractor")
    with tracing.request_span("POST", "/submit") as root:
        with tracing.produce_span("conveyor.extract", job_id="job-5") as produced:
            assert tracing.kafka_headers() == []
            assert tracing.trace_dict() == {}
            assert tracing.current_trace_id() is None
    with tracing.stage_span("extractor", job_id="job-5", headers=[], topic="conveyor.extract", partition=0,
                            offset=0) as consumed:
        pass
    assert not any(s.is_recording() for s in (root, produced, consumed))


# In a fresh process: with no OTEL_* variables nothing is installed, so nothing can be recorded.
OFF_SCRIPT = """
import json
from opentelemetry import trace
from conveyor import tracing
tracing.setup_tracing("extractor")
with tracing.request_span("POST", "/submit") as root:
    with tracing.produce_span("conveyor.extract", job_id="j") as produced:
        headers = tracing.kafka_headers()
        envelope = tracing.trace_dict()
with tracing.stage_span("extractor", job_id="j", headers=headers, topic="conveyor.extract",
                        partition=0, offset=0) as consumed:
    trace_id = tracing.current_trace_id()
tracing.shutdown_tracing()
print(json.dumps({
    "headers": headers, "envelope": envelope, "trace_id": trace_id,
    "recording": [s.is_recording() for s in (root, produced, consumed)],
    "provider": type(trace.get_tracer_provider()).__name__,
}))
"""


@pytest.mark.parametrize("env", [{}, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}],
                         ids=["no-otel-env", "sdk-disabled"])
def test_tracing_off_in_a_fresh_process(env: dict[str, str]) -> None:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", OFF_SCRIPT], env={**clean, **env}, capture_output=True,
                            text=True, timeout=60, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "headers": [], "envelope": {}, "trace_id": None, "recording": [False, False, False],
        "provider": "ProxyTracerProvider",
    }


@pytest.mark.parametrize(("console", "env", "expected"), [
    (False, {}, []),
    (True, {}, ["console"]),
    (False, {"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    (False, {"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
    (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    (False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    (False, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    (True, {"OTEL_SDK_DISABLED": "true"}, []),
    (False, {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    (True, {"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
])
def test_which_exporters_the_environment_selects(console: bool, env: dict[str, str], expected: list[str]) -> None:
    assert tracing._exporter_names(console, env) == expected


def test_unknown_exporter_fails_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing._exporter_names(False, {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_console_exporter_prints_spans(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "docs-extractor")
    tracing.setup_tracing("extractor", console=True)
    with tracing.produce_span("conveyor.summarize", job_id="job-6"):
        pass
    tracing.shutdown_tracing()
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "conveyor.summarize publish"
    assert printed["kind"] == "SpanKind.PRODUCER"
    assert printed["attributes"]["conveyor.job_id"] == "job-6"
    assert printed["resource"]["attributes"]["service.name"] == "docs-extractor"


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_http_export_on_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        tracing.setup_tracing("summarizer")
        tracing.setup_tracing("summarizer")  # a second call changes nothing
        with tracing.produce_span("conveyor.notify", job_id="job-7"):
            pass
        tracing.shutdown_tracing()  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
    (path, content_type, body), = _Collector.received
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"conveyor-summarizer" in body and b"conveyor.notify publish" in body and b"job-7" in body


def test_shutdown_is_bounded_when_the_collector_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    tracing.shutdown_tracing()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the abandoned exporter gives up soon after
    tracing.setup_tracing("shutdown-test")
    for _ in range(50):
        with tracing.produce_span("conveyor.extract", job_id="j"):
            pass
    started = time.monotonic()
    tracing.shutdown_tracing(timeout=1.0)
    assert time.monotonic() - started < 2.0
    assert tracing.kafka_headers() == []
    time.sleep(1.5)  # let the abandoned export finish its last try inside this test

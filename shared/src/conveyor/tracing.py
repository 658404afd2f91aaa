"""OpenTelemetry tracing: one trace per job, from the gateway request through every stage.

Trace context travels between processes in the W3C `traceparent`/`tracestate` Kafka headers (and
in the event envelope's `trace` field). Tracing is off unless asked for, by `--trace-console` /
`CONVEYOR_TRACE_CONSOLE` or by the standard `OTEL_*` variables; while off, every function here is a
cheap no-op and no spans are created.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "current_trace_id",
    "install_in_memory_exporter",
    "kafka_headers",
    "produce_span",
    "request_span",
    "setup_tracing",
    "shutdown_tracing",
    "stage_span",
    "trace_dict",
]

log = logging.getLogger(__name__)

TRACER_NAME = "conveyor"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRUE = {"1", "true", "yes", "on"}


class _State:
    """The process's tracing setup; `tracer` is None while tracing is off."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured = False
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        self.memory: InMemorySpanExporter | None = None


_state = _State()


# --- setup -------------------------------------------------------------------------------------

def _exporter_names(console: bool, environ: Mapping[str, str]) -> list[str]:
    """Which exporters the flag and the standard OTEL_* variables ask for; empty means off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    names: list[str] = ["console"] if console else []
    requested = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if requested:
        wanted = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in ("otlp", "console", "none")]
        if unknown:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={requested!r}: unsupported exporter(s) {unknown}; "
                "use otlp, console or none"
            )
        names += [n for n in wanted if n != "none"]
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        names.append("otlp")
    return list(dict.fromkeys(names))


def _make_exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout)
    # Imported here: the protobuf/requests stack is only loaded when OTLP is really used.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: from the OTEL_EXPORTER_OTLP_* variables


def _resource(service_name: str) -> Resource:
    name = os.environ.get("OTEL_SERVICE_NAME") or f"conveyor-{service_name}"
    return Resource.create({SERVICE_NAME: name})


def _install(provider: TracerProvider) -> None:
    """Make `provider` the one this module uses, and the global one if none is set yet."""
    _state.provider = provider
    _state.tracer = provider.get_tracer(TRACER_NAME)
    _state.configured = True
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def setup_tracing(service_name: str, *, console: bool = False) -> None:
    """Configure tracing once per process; a no-op unless `console` or the OTEL_* env ask for it."""
    with _state.lock:
        if _state.configured:
            return
        names = _exporter_names(console, os.environ)
        if not names:
            _state.configured = True
            return
        resource = _resource(service_name)
        provider = TracerProvider(resource=resource)
        for name in names:
            exporter = _make_exporter(name)
            processor = SimpleSpanProcessor(exporter) if name == "console" else BatchSpanProcessor(exporter)
            provider.add_span_processor(processor)
        _install(provider)
    log.info("tracing on for %s: exporting to %s", resource.attributes[SERVICE_NAME], ", ".join(names))


SHUTDOWN_SECONDS = 3.0


def shutdown_tracing(*, timeout: float = SHUTDOWN_SECONDS) -> None:
    """Flush pending spans for at most `timeout` seconds and stop the exporters; tracing is off afterwards.

    An unreachable collector must not hold a stopping worker past its grace period: spans not
    exported in time are dropped (the work itself is already committed).
    """
    with _state.lock:
        provider = _state.provider
        _state.provider = _state.tracer = _state.memory = None
        _state.configured = False
    if provider is not None:
        stopper = threading.Thread(target=provider.shutdown, name="tracing-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning("trace exporter did not finish within %.0fs; dropping unexported spans", timeout)


def install_in_memory_exporter() -> InMemorySpanExporter:
    """For tests: record every span in memory (synchronously). Calling it again clears the spans."""
    with _state.lock:
        if _state.memory is not None and _state.provider is not None:
            _state.memory.clear()
            return _state.memory
        old = _state.provider
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=_resource("test"))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _install(provider)
        _state.memory = exporter
    if old is not None:
        old.shutdown()
    return exporter


# --- propagation -------------------------------------------------------------------------------

class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads W3C trace headers from Kafka record headers: a sequence of (key, bytes)."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [
            v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)
            for k, v in carrier if k.lower() == key and v is not None
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def trace_dict() -> dict[str, str]:
    """The current span's W3C context ({'traceparent': ..., 'tracestate': ...}); {} when none."""
    if _state.tracer is None:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def kafka_headers(context: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """A W3C context (default: the current span's, `trace_dict()`) as Kafka headers; [] when there
    is no span or tracing is off."""
    return [(key, value.encode("ascii")) for key, value in (trace_dict() if context is None else context).items()]


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, for log lines; None outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


# --- spans -------------------------------------------------------------------------------------

def _consumer_group(stage: str, topic: str) -> str:
    # Topics are `<prefix>.<suffix>` and groups `<prefix>-<stage>` (conveyor.topics).
    prefix = topic.rsplit(".", 1)[0] if "." in topic else "conveyor"
    return f"{prefix}-{stage}"


@contextmanager
def _span(name: str, kind: SpanKind, attributes: dict[str, str | int],
          parent: otel_context.Context | None = None) -> Iterator[Span]:
    tracer = _state.tracer
    if tracer is None:
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


@contextmanager
def stage_span(stage: str, *, job_id: str | None, headers: Sequence[tuple[str, bytes]] | None, topic: str,
               partition: int, offset: int) -> Iterator[Span]:
    """CONSUMER span `<stage> process` for one record, child of the producer span in its headers."""
    if _state.tracer is None:
        yield trace.INVALID_SPAN
        return
    # An empty base context: a record without trace headers starts a new trace.
    parent = _PROPAGATOR.extract(list(headers or ()), context=otel_context.Context(), getter=_GETTER)
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.message.offset": offset,
        "messaging.consumer.group.name": _consumer_group(stage, topic),
        "conveyor.stage": stage,
    }
    if job_id:
        attributes["conveyor.job_id"] = job_id
    with _span(f"{stage} process", SpanKind.CONSUMER, attributes, parent) as span:
        yield span


@contextmanager
def produce_span(topic: str, *, job_id: str | None) -> Iterator[Span]:
    """PRODUCER span `<topic> publish`; inside it `kafka_headers()` carries this span's context."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    if job_id:
        attributes["conveyor.job_id"] = job_id
    with _span(f"{topic} publish", SpanKind.PRODUCER, attributes) as span:
        yield span


@contextmanager
def request_span(method: str, route: str) -> Iterator[Span]:
    """SERVER span `<method> <route>` for one gateway request: the root of a job's trace."""
    attributes: dict[str, str | int] = {"http.request.method": method, "http.route": route}
    with _span(f"{method} {route}", SpanKind.SERVER, attributes) as span:
        yield span

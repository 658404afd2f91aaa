"""Prometheus metrics, defined once. Names follow Prometheus conventions: `conveyor_` prefix,
base units, `_total` for counters, `_seconds` for durations.

Stages are labelled by `stage` (extractor, summarizer, notifier); the gateway by `route`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# --- Stage delivery (shared consumer loop) ----------------------------------------------------
EVENTS_CONSUMED = Counter("conveyor_events_consumed_total", "Records a stage fetched.", ["stage"])
EVENTS_PRODUCED = Counter(
    "conveyor_events_produced_total", "Records a stage produced downstream.", ["stage", "topic"]
)
EVENTS_FAILED = Counter(
    "conveyor_events_failed_total", "Handler failures, by error class.", ["stage", "error"]
)
EVENTS_RETRIED = Counter("conveyor_events_retried_total", "Retries after a transient failure.", ["stage"])
EVENTS_DEAD_LETTERED = Counter(
    "conveyor_events_dead_lettered_total", "Records sent to the stage's dead-letter topic.", ["stage"]
)
EVENTS_SKIPPED = Counter(
    "conveyor_events_skipped_total", "Redelivered records skipped as already done.", ["stage"]
)
PROCESSING_SECONDS = Histogram(
    "conveyor_processing_seconds", "Handler time per record, retries included.", ["stage"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("conveyor_in_flight", "Records being processed now.", ["stage"])
RECORDS_WAITING = Gauge(
    "conveyor_records_waiting", "Records held in the window while a dependency they need is unavailable.",
    ["stage"],
)
CIRCUIT_OPEN = Gauge(
    "conveyor_circuit_open", "1 while the circuit breaker of a dependency is open (the dependency is down).",
    ["dependency"],
)
CONSUMER_LAG = Gauge(
    "conveyor_consumer_lag",
    "Exact lag: log end offset minus committed offset.",
    ["group", "topic", "partition"],
)

# --- Gateway -----------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "conveyor_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "conveyor_http_request_duration_seconds", "HTTP request latency.", ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_PAYLOAD_BYTES = Histogram(
    "conveyor_http_request_payload_bytes", "Accepted payload sizes.", ["route"],
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
JOBS_SUBMITTED = Counter("conveyor_jobs_submitted_total", "Jobs accepted by the gateway.", ["kind"])
HTTP_REFUSED = Counter(
    "conveyor_http_refused_total",
    "Requests the gateway turned away: unauthenticated, rate_limited, quota (too many active jobs), budget (daily tokens spent), event_streams (too many open), overloaded.",
    ["reason"],
)
PIPELINE_BACKLOG = Gauge(
    "conveyor_pipeline_backlog", "Records waiting in the most backed-up stage, as the gateway last measured."
)

# --- Model servers (summarizer, embedder) -------------------------------------------------------
LLM_LATENCY = Histogram(
    "conveyor_llm_request_duration_seconds", "Latency of calls to model servers (summaries, embeddings).",
    ["backend", "outcome"], buckets=LATENCY_BUCKETS,
)
LLM_TOKENS = Counter("conveyor_llm_tokens_total", "Tokens reported by the LLM.", ["kind"])
LLM_RATE_LIMITED = Counter("conveyor_llm_rate_limited_total", "429 answers from the LLM.")
LLM_CONCURRENCY_LIMIT = Gauge(
    "conveyor_llm_concurrency_limit", "Calls an LLM endpoint is given at once, as learned from its 429s.", ["endpoint"]
)

# --- Usage (conveyor.usage): what model calls cost, per tenant ---------------------------------
USAGE_TOKENS = Counter("conveyor_usage_tokens_total", "Tokens of answered model calls, per tenant and stage.", ["tenant", "stage"])
USAGE_CALLS = Counter("conveyor_usage_calls_total", "Answered calls to model servers, per tenant and stage.", ["tenant", "stage"])

# --- Embedder ---------------------------------------------------------------------------------
CHUNKS_EMBEDDED = Counter(
    "conveyor_chunks_embedded_total", "Document chunks embedded and written to the vector store.", ["backend"]
)

# --- Notifier ----------------------------------------------------------------------------------
JOBS_COMPLETED = Counter("conveyor_jobs_completed_total", "Jobs that reached completed.")
WEBHOOK_DELIVERIES = Counter(
    "conveyor_webhook_deliveries_total", "Webhook attempts by outcome.", ["outcome"]
)

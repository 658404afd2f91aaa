"""All configuration, read once from `CONVEYOR_*` environment variables.

Every field's default is the embedded, single-machine setup; production overrides them through the
Helm chart's ConfigMap and Secret. A wrong value fails at start-up naming its env var, and so does
a `CONVEYOR_*` name no part of Conveyor reads (`conveyor.variables`).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor.cpus import usable_cpus
from conveyor.variables import OWNED_PREFIXES, READ_ELSEWHERE, unknown_variables, variables_of

DEFAULT_HOME = Path(".conveyor")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # --- Kafka / Redpanda --------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    topic_prefix: str = Field("conveyor", description="Prefix of every topic and consumer group.")
    partitions: int = Field(6, ge=1, description="Partitions per topic when Conveyor creates them.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field("SCRAM-SHA-256", description="SASL mechanism when SASL is on.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    create_topics: bool = Field(
        True, description="Create missing topics at start; off when an operator (Redpanda, Conveyor) owns them."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS; empty = system CAs.")
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="Producer max request size; larger payloads use the blob store."
    )
    pipeline_stages: Annotated[list[str], NoDecode] = Field(
        ["extractor", "summarizer", "notifier"],
        description="The pipeline's stages in data-flow order, comma separated: the gateway sends to the first, a job's status lists them all.",
    )
    # A stage's bindings: set per stage by the operator and `conveyor up -f`; unset, each is
    # derived from the stage's name, its place in the pipeline and the prefix.
    input_topic: str | None = Field(None, description="Topic a stage worker reads; default `<prefix>.<stage>`.")
    output_topic: str | None = Field(
        None, description="Topic a stage's outputs go to; default the next stage's input; empty: the last stage (its outputs complete the job)."
    )
    next_stage: str | None = Field(None, description="The stage that reads a stage's output topic; default the next in the pipeline.")
    notify_topic: str | None = Field(
        None, description="Where a stage sends the failure notices of jobs with a callback; default the notifier's input, when the pipeline has one."
    )
    dlq_topic: str | None = Field(None, description="A stage's dead-letter topic; default `<input topic>.dlq`.")
    consumer_group: str | None = Field(None, description="A stage's consumer group; default `<prefix>-<stage>`.")

    # --- Delivery ------------------------------------------------------------------------------
    batch_size: int = Field(64, ge=1, description="Records a worker fetches at once.")
    concurrency: int = Field(16, ge=1, description="Records a worker's handler works on at once.")
    max_in_flight: int = Field(
        256, ge=1, description="Records a worker holds (handling or waiting to retry); when full it pauses fetching."
    )
    commit_interval_seconds: float = Field(0.5, gt=0, description="How often finished offsets are committed.")
    max_attempts: int = Field(5, ge=1, description="Tries per event before it goes to the DLQ (counted in the job store).")
    stage_timeout_seconds: float = Field(300.0, gt=0, description="Deadline of one attempt at a record; past it the attempt fails.")
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="Consumer group poll interval; the worker polls continuously, whatever its records take."
    )
    liveness_stall_seconds: float | None = Field(
        None, gt=0, description="/healthz fails after this long without progress while work is running; default: stage timeout + 60 s."
    )
    retry_base_seconds: float = Field(0.5, gt=0, description="First retry backoff (doubles, jittered).")
    retry_max_seconds: float = Field(30.0, gt=0, description="Backoff ceiling.")
    circuit_failures: int = Field(
        16, ge=1, description="Consecutive failures of a dependency (LLM endpoint, webhook host) that open its circuit breaker."
    )
    circuit_probe_seconds: float = Field(1.0, gt=0, description="First probe of an open circuit after this; the interval doubles.")
    circuit_probe_max_seconds: float = Field(30.0, gt=0, description="Longest interval between probes of an open circuit.")
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer group session timeout.")

    # --- Parsing untrusted documents (extractor) -------------------------------------------------
    parse_processes: int = Field(0, ge=0, description="Parser processes per extractor; 0 = the CPUs it may use (its affinity and container CPU limit).")
    parse_timeout_seconds: float = Field(60.0, gt=0, description="A document still parsing after this is killed; the attempt fails.")
    parse_memory_mb: int = Field(1024, ge=0, description="Memory a parse may add to its process; past it the attempt fails. 0 = no cap.")

    # --- Gateway ---------------------------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Gateway bind address (the chart sets 0.0.0.0).")
    gateway_port: int = Field(8000, description="Gateway port.")
    public_url: str = Field("", description="Base URL used in status links; empty = request's host.")
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1, description="413 past this size.")
    max_json_bytes: int = Field(5 * 1024 * 1024, ge=1, description="413 past this JSON body size.")
    claim_check_bytes: int = Field(
        256 * 1024, ge=0, description="Payloads at least this large travel as blob references."
    )
    api_docs: bool = Field(True, description="Serve /docs and /openapi.json on the gateway's metrics port (never the public one).")

    # --- Gateway: credentials, tenants, limits ------------------------------------------------------
    api_keys_file: Path | None = Field(None, description="API keys (hashed, one tenant each); default: <home>/api-keys.json.")
    oidc_issuer: str | None = Field(None, description="OIDC issuer whose bearer JWTs the gateway accepts; empty = API keys only.")
    oidc_audience: str | None = Field(None, description="Audience an OIDC token must carry (required with the issuer).")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL of the issuer's signing keys; empty = <issuer>/.well-known/jwks.json.")
    oidc_tenant_claim: str = Field("tenant", description="Token claim naming the tenant.")
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="Accepted JWT signing algorithms, comma separated."
    )
    tenant_requests_per_second: float = Field(
        100.0, gt=0, description="API requests per second per tenant and gateway process (bursts of twice that); past it 429."
    )
    tenant_max_active_jobs: int = Field(10_000, ge=1, description="Unfinished jobs a tenant may have; past it /submit and /upload answer 429.")
    idempotency_ttl_seconds: float = Field(
        86_400.0, gt=0, description="How long an Idempotency-Key of /submit and /upload returns its first request's job."
    )
    tenant_daily_tokens: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Daily token budgets, `tenant=tokens` comma separated, `*` for every other tenant; empty = none. A tenant past its budget gets 429 from /submit and /upload until midnight UTC.",
    )
    tenant_max_event_streams: int = Field(16, ge=1, description="Open GET /jobs/{id}/events streams a tenant may hold per gateway process; past it 429.")
    event_stream_poll_seconds: float = Field(0.5, gt=0, le=30, description="How often an event stream reads its job's status.")
    event_stream_max_seconds: float = Field(3600.0, gt=0, description="Longest an event stream stays open; the client reconnects for more.")
    max_pipeline_lag: int | None = Field(
        None, ge=1, description="Records waiting in any stage past which /submit and /upload answer 503; empty = no bound."
    )

    # --- Stores ----------------------------------------------------------------------------------
    home: Path = Field(DEFAULT_HOME, description="Folder for local state (SQLite, blobs).")
    status_store: Literal["sqlite", "redis"] = Field("sqlite", description="Job status backend; redis for several gateway replicas.")
    sqlite_path: Path | None = Field(None, description="Default: <home>/jobs.sqlite3.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL when the status store is redis.")
    redis_prefix: str = Field("conveyor:job:", description="Key prefix of job records in Redis.")
    job_ttl_seconds: int | None = Field(
        None, ge=1, description="Job records expire this long after their last update (in SQLite: completed jobs)."
    )
    blob_store: Literal["file", "s3"] = Field("file", description="Claim-check blob store backend.")
    blob_dir: Path | None = Field(None, description="Default: <home>/blobs.")
    s3_bucket: str = Field("conveyor", description="S3 bucket for blobs.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph...); empty = AWS.")
    s3_prefix: str = Field("blobs/", description="Key prefix for blobs in the bucket.")

    # --- Summarizer --------------------------------------------------------------------------
    summarizer_backend: Literal["textrank", "openai"] = Field("textrank", description="textrank (offline, default) or openai (any OpenAI-compatible API).")
    summary_sentences: int = Field(5, ge=1, le=50, description="Most sentences per summary; TextRank gives one per 10 prose sentences of the document, within the range.")
    summary_min_sentences: int = Field(1, ge=1, le=50, description="Fewest sentences per TextRank summary (when the document has that many).")
    max_summary_chars: int = Field(
        10_000, ge=100, description="Longest summary kept; a longer one (a text without sentence ends) is cut at a word."
    )
    textrank_max_sentences: int = Field(
        400, ge=10, description="Longer texts are chunked; TextRank cost grows with the square."
    )
    textrank_processes: int = Field(0, ge=0, description="Process pool size; 0 = the CPUs it may use (its affinity and container CPU limit).")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible API base URL (vLLM, Ollama, OpenAI).")
    openai_api_key: SecretStr = Field(SecretStr("not-needed"), description="API key for the LLM endpoint (secret).")
    openai_model: str = Field("gpt-4o-mini", description="Model name sent to the LLM endpoint.")
    openai_timeout_seconds: float = Field(30.0, gt=0, description="Per-request LLM timeout.")
    openai_fallback_base_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated OpenAI-compatible base URLs tried in order while the ones before are down."
    )
    openai_fallback_model: str | None = Field(None, description="Model name for the fallback endpoints; empty = CONVEYOR_OPENAI_MODEL.")
    openai_max_concurrency: int = Field(8, ge=1, description="Most LLM calls in flight per endpoint and process; 429s lower it, successes grow it back.")
    openai_requests_per_minute: float | None = Field(None, gt=0, description="Requests-per-minute budget per endpoint and process; empty = none.")
    openai_tokens_per_minute: float | None = Field(
        None, gt=0, description="Tokens-per-minute budget per endpoint and process (prompt estimated at 4 characters a token); empty = none."
    )
    openai_max_input_chars: int = Field(
        24_000, ge=1000, description="Largest text sent in one LLM call; a longer document is summarized in chunks of this size, then their summaries are summarized (map-reduce)."
    )
    openai_map_concurrency: int = Field(
        4, ge=1, description="Most chunk calls of one long document in flight at once (the endpoint's CONVEYOR_OPENAI_MAX_CONCURRENCY still applies)."
    )

    # --- Embedder ----------------------------------------------------------------------------
    embedder_backend: Literal["minilm", "openai"] = Field(
        "minilm", description="minilm (the packaged all-MiniLM-L6-v2, offline; the embedder's minilm extra) or openai (any OpenAI-compatible embeddings API)."
    )
    embed_chunk_chars: int = Field(1000, ge=100, le=20_000, description="Longest chunk of a document, in characters; chunks hold whole blocks where they fit.")
    embed_max_chunks: int = Field(
        2000, ge=1, description="Most chunks embedded per document; the rest are counted in the job's meta (chunks_not_embedded), not embedded."
    )
    embed_batch_size: int = Field(16, ge=1, le=2048, description="Chunks embedded per model call.")
    embeddings_base_url: str | None = Field(
        None, description="OpenAI-compatible embeddings API base URL (TEI, vLLM, OpenAI); its key is CONVEYOR_OPENAI_API_KEY."
    )
    embeddings_model: str = Field("text-embedding-3-small", description="Model name sent to the embeddings endpoint.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; empty = Qdrant embedded in the embedder, in CONVEYOR_QDRANT_PATH (one embedder process).")
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant API key (secret).")
    qdrant_path: Path | None = Field(None, description="Folder of the embedded Qdrant; default: <home>/qdrant.")
    qdrant_collection: str = Field("conveyor_chunks", min_length=1, description="Collection the chunks' vectors are written to.")
    qdrant_timeout_seconds: int = Field(10, ge=1, description="Per-request Qdrant server timeout, whole seconds.")

    # --- Notifier ----------------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        None, description="Master key of the tenants' webhook secrets (secret; two, comma separated, while rotating); the notifier needs it. conveyor up makes one in <home>/webhook-secret."
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Per-attempt webhook timeout.")
    webhook_retry_schedule: Annotated[list[NonNegativeFloat], NoDecode] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Seconds between a failed webhook and each retry, comma separated (about 27 h in all by default).",
    )
    webhook_host_concurrency: int = Field(8, ge=1, description="Webhook POSTs in flight to one host per notifier process.")
    webhook_allow_private: bool = Field(
        False, description="Allow callbacks to addresses that are not global (loopback, private, 100.64.0.0/10, link-local...)."
    )
    webhook_max_response_bytes: int = Field(
        65_536, ge=0, description="Most of a webhook answer's body the notifier reads; the rest is not read."
    )

    # --- Telemetry -----------------------------------------------------------------------------
    metrics_port: int = Field(0, ge=0, description="Prometheus port for workers; 0 = off.")
    metrics_host: str = Field("0.0.0.0", description="Bind address of a worker's probes and metrics (conveyor up uses 127.0.0.1).")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_json: bool = Field(False, description="JSON log lines (with job_id and trace_id).")
    trace_console: bool = Field(False, description="Print trace spans to the console (OTEL_* env vars configure OTLP).")
    lag_interval_seconds: float = Field(
        15.0, ge=0, description="How often the gateway exports exact consumer lag; 0 = off."
    )

    @field_validator("openai_fallback_base_urls", "webhook_retry_schedule", "oidc_algorithms", "pipeline_stages",
                     mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("tenant_daily_tokens", mode="before")
    @classmethod
    def _tenant_budgets(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        budgets: dict[str, object] = {}
        for pair in (part.strip() for part in value.split(",") if part.strip()):
            tenant, equals, tokens = pair.partition("=")
            if not equals or not tenant.strip():
                raise ValueError(f"expected tenant=tokens pairs (e.g. acme=200000,*=50000), got {pair[:60]!r}")
            budgets[tenant.strip()] = tokens.strip()
        return budgets

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError("CONVEYOR_OIDC_ISSUER needs CONVEYOR_OIDC_AUDIENCE (a token for any audience is no credential)")
        if bad := [a for a in self.oidc_algorithms if not a.startswith(("RS", "PS", "ES", "EdDSA"))]:
            raise ValueError(f"CONVEYOR_OIDC_ALGORITHMS: {', '.join(bad)} not allowed; use asymmetric ones (RS256, ES256...)")
        if not self.pipeline_stages or len(set(self.pipeline_stages)) != len(self.pipeline_stages):
            raise ValueError("CONVEYOR_PIPELINE_STAGES: name each stage once, in data-flow order (extractor,summarizer,notifier)")
        if any(tokens < 1 for tokens in self.tenant_daily_tokens.values()):
            raise ValueError("CONVEYOR_TENANT_DAILY_TOKENS: each budget is a positive number of tokens")
        if self.max_pipeline_lag is not None and not self.lag_interval_seconds:
            raise ValueError("CONVEYOR_MAX_PIPELINE_LAG needs CONVEYOR_LAG_INTERVAL_SECONDS > 0 (the lag is measured that often)")
        return self

    def resolved_parse_processes(self) -> int:
        return self.parse_processes or usable_cpus()

    def resolved_textrank_processes(self) -> int:
        return self.textrank_processes or usable_cpus()

    def resolved_liveness_stall_seconds(self) -> float:
        return self.liveness_stall_seconds or self.stage_timeout_seconds + 60

    def resolved_sqlite_path(self) -> Path:
        return self.sqlite_path or self.home / "jobs.sqlite3"

    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.home / "blobs"

    def resolved_qdrant_path(self) -> Path:
        return self.qdrant_path or self.home / "qdrant"

    def resolved_api_keys_file(self) -> Path:
        return self.api_keys_file or self.home / "api-keys.json"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def load_settings() -> Settings:
    """Settings for a service's entry point: a bad value ends the process with exit code 2 and
    one line per bad variable."""
    unknown = unknown_variables(os.environ, variables_of(Settings) | set(READ_ELSEWHERE), owned=OWNED_PREFIXES)
    if unknown:
        print("\n".join(unknown), file=sys.stderr)
        raise SystemExit(2)
    try:
        return Settings()
    except ValidationError as exc:
        print("\n".join(invalid_settings(exc, Settings)), file=sys.stderr)
        raise SystemExit(2) from None


def invalid_settings(error: ValidationError, model: type[BaseSettings]) -> list[str]:
    """One line per bad value, naming its environment variable; secret values are not echoed."""
    prefix = str(model.model_config.get("env_prefix", ""))
    lines = []
    for problem in error.errors(include_url=False):
        if not problem["loc"]:  # settings that do not fit together; the message names them
            lines.append(f"invalid settings: {problem['msg'].removeprefix('Value error, ')}")
            continue
        field = str(problem["loc"][0])
        variable = f"{prefix}{field}".upper()
        annotation = model.model_fields[field].annotation if field in model.model_fields else None
        secret = "SecretStr" in str(annotation)
        shown = "" if secret or "input" not in problem else f"={str(problem['input'])[:80]!r}"
        lines.append(f"invalid setting {variable}{shown}: {problem['msg']}")
    return lines

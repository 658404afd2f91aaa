"""Versioned event envelopes carried on every stage topic, and the dead-letter record.

An event names the job, the stage that must handle it next and its payload, either inline or as a
claim-check reference to the blob store.

Compatibility rule: `version` is the major version of the envelope. Within a major version,
changes only add optional fields; readers keep fields they do not know (and pass them on
downstream), so during a rolling upgrade an older worker handles what a newer producer sends. A
change that removes, renames or retypes a field is a new major version, which a worker that does
not support it dead-letters with a clear error instead of guessing.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
# A tenant's name for a document it submits versions of: printable ASCII, no spaces, bounded.
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$"
SUPPORTED_VERSIONS = frozenset({1})


class EventDecodeError(ValueError):
    """A record's bytes are not an event this worker can read."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class BlobRef(BaseModel):
    """Claim check: where a large payload lives, and how to verify it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    uri: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Payload(BaseModel):
    """Exactly one of `text`, `data_b64` or `blob` is set."""

    model_config = ConfigDict(extra="allow")
    text: str | None = None
    data_b64: str | None = None
    blob: BlobRef | None = None
    content_type: str = "text/plain"
    filename: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, **kwargs: Any) -> "Payload":
        return cls(data_b64=base64.b64encode(data).decode("ascii"), **kwargs)

    def inline_bytes(self) -> bytes | None:
        if self.data_b64 is not None:
            return base64.b64decode(self.data_b64)
        if self.text is not None:
            return self.text.encode("utf-8")
        return None


class Failure(BaseModel):
    """Why a job ended failed, on the event that tells the notifier (and so its callback)."""

    stage: str
    error: str = Field(max_length=1000)


class Event(BaseModel):
    """One unit of work for one stage."""

    model_config = ConfigDict(extra="allow")
    version: int = SCHEMA_VERSION
    job_id: str = Field(min_length=1, max_length=128)
    tenant: str = Field("default", description="The tenant the submitting credential belongs to.")
    user_id: str = Field(min_length=1, max_length=256)
    stage: str
    attempt: int = Field(1, ge=1)
    created_at: datetime = Field(default_factory=utcnow)
    emitted_at: datetime = Field(default_factory=utcnow)
    callback_url: str | None = None
    trace: dict[str, str] = Field(default_factory=dict, description="W3C trace context.")
    payload: Payload
    summary: str | None = None
    failure: Failure | None = Field(None, description="Set on the notice of a job that failed in a stage.")
    document_id: str | None = Field(None, pattern=DOCUMENT_ID_PATTERN,
                                    description="The tenant's document this job is a version of.")
    erasure: bool = Field(False, description="Erases `document_id` in every stage that stores something of it.")
    meta: dict[str, Any] = Field(default_factory=dict)

    def partition_key(self) -> bytes:
        """The record key: a document's versions (and its erasure) share one, so every stage sees
        them in the order they were submitted, one at a time; other jobs are keyed by job id."""
        return (document_key(self.tenant, self.document_id) if self.document_id else self.job_id).encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Event":
        """Parse a record; EventDecodeError names what is wrong (bad bytes, unsupported version)."""
        try:
            event = cls.model_validate_json(raw)
        except ValidationError as exc:
            raise EventDecodeError(_version_problem(raw) or f"not a valid event: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise EventDecodeError(f"not UTF-8 JSON: {exc}") from exc
        if event.version not in SUPPORTED_VERSIONS:
            raise EventDecodeError(_unsupported(event.version))
        return event

    def next(self, **changes: Any) -> "Event":
        """A handler's output: same job, fresh attempt count and timestamp. The runtime addresses
        it to the stage that reads its output topic."""
        return self.model_copy(update={"attempt": 1, "emitted_at": utcnow(), **changes})


def record_key(raw: bytes, job_id: str | None) -> bytes | None:
    """The key to send an event's bytes with again (a re-drive, a replayed dead letter): its
    `partition_key`, or the job id when the bytes are no event this version reads."""
    try:
        return Event.from_bytes(raw).partition_key()
    except EventDecodeError:
        return job_id.encode() if job_id else None


def document_key(tenant: str, document_id: str) -> str:
    """A document's identity across tenants (tenant names have no `/`)."""
    return f"{tenant}/{document_id}"


def _unsupported(version: object) -> str:
    return (f"unsupported event version {version!r}: this worker reads version(s) "
            f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))}")


def _version_problem(raw: bytes) -> str | None:
    """A clearer reason than a validation error when the envelope is of another major version."""
    try:
        version = json.loads(raw).get("version")
    except (ValueError, AttributeError):
        return None
    return _unsupported(version) if version is not None and version not in SUPPORTED_VERSIONS else None


class DeadLetter(BaseModel):
    """What lands on a stage's DLQ: the error and the original record, byte for byte."""

    model_config = ConfigDict(extra="allow")
    version: int = SCHEMA_VERSION
    stage: str
    job_id: str | None
    error_type: str
    error: str
    attempts: int
    failed_at: datetime = Field(default_factory=utcnow)
    source_topic: str
    source_partition: int
    source_offset: int
    original_b64: str
    original_headers: list[tuple[str, str]] = Field(default_factory=list)

    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)

    def tenant(self) -> str | None:
        """The original event's tenant; None when the original is not a readable event."""
        try:
            original = json.loads(self.original())
        except ValueError:
            return None
        if not isinstance(original, dict) or "job_id" not in original:
            return None  # JSON, but no event of any tenant
        tenant = original.get("tenant", "default")  # events from before tenants are the default one's
        return tenant if isinstance(tenant, str) else None

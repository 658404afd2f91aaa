"""The gateway's request and response bodies (they shape the OpenAPI docs at /docs)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl

from conveyor.events import DOCUMENT_ID_PATTERN
from conveyor.stores.base import Delivery, JobRecord, JobState, StageProgress


MAX_CONTENT_TYPE_CHARS = 200
# type/subtype, optional parameters; printable ASCII only, so no header or log line can be forged.
CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;[ -~]*)?$"


DOCUMENT_ID_DESCRIPTION = ("Your name for the document this is a version of: a new version replaces its "
                           "summary and vectors; one with the last completed version's content completes at once "
                           "as unchanged.")


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=256, examples=["u1"])
    content: str = Field(min_length=1, description="Document text (or HTML).")
    content_type: str = Field("text/plain", max_length=MAX_CONTENT_TYPE_CHARS, pattern=CONTENT_TYPE_PATTERN,
                              description="e.g. text/plain or text/html.")
    callback_url: HttpUrl | None = Field(None, description="POSTed the signed result when done.")
    document_id: str | None = Field(None, pattern=DOCUMENT_ID_PATTERN, examples=["handbook/chapter-1"],
                                    description=DOCUMENT_ID_DESCRIPTION)


class Problem(BaseModel):
    """Every error answer: what was wrong, in a sentence (validation errors also list each field)."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="400/422: each bad field's location and message.")


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's error answers."""
    meaning = {
        400: "Malformed body.", 401: "No valid credential.", 404: "No such job (or not the caller's tenant's).",
        409: "The job is not in a state that allows it.", 413: "Body over the size limit.",
        415: "Unsupported document type.", 422: "Invalid field.",
        429: "Over the tenant's rate or active-job quota; see Retry-After.",
        503: "The pipeline is backed up or a store is unavailable; nothing was accepted; see Retry-After.",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}


class Accepted(BaseModel):
    job_id: str
    status: JobState
    status_url: str


class JobUsage(BaseModel):
    tokens: int = Field(description="Tokens of its answered model calls (LLM prompt and answer, embeddings).")
    calls: int = Field(description="Answered calls to model servers.")


class TenantUsage(BaseModel):
    tenant: str
    day: str = Field(description="The UTC day, YYYY-MM-DD.")
    tokens: int
    calls: int
    jobs: int = Field(description="Jobs that spent anything that day.")
    daily_token_budget: int | None = Field(None, description="The tenant's budget (CONVEYOR_TENANT_DAILY_TOKENS); None: none.")
    remaining: int | None = Field(None, description="Tokens left of it that day (0 once spent: submissions get 429).")
    resets_at: datetime = Field(description="When the day ends and its budget starts again.")


class JobView(BaseModel):
    job_id: str
    tenant: str
    user_id: str
    status: JobState
    created_at: datetime
    updated_at: datetime
    stages: dict[str, StageProgress]
    summary: str | None = None
    error: str | None = None
    notified_at: datetime | None = None
    waiting_for: str | None = Field(None, description="While waiting: the unavailable dependency it waits for.")
    waiting_since: datetime | None = None
    delivery: Delivery | None = Field(None, description="The webhook's delivery, once its first attempt failed.")
    meta: dict[str, Any] = Field(default_factory=dict)
    usage: JobUsage | None = Field(None, description="What its model calls cost so far (GET /jobs/{id} only).")
    document_id: str | None = Field(None, description="The document this job is a version of.")
    content_sha256: str | None = Field(None, description="A version's content hash.")
    unchanged_from: str | None = Field(None, description="An unchanged version: the job whose result it repeats.")
    erases: str | None = Field(None, description="An erasure: the document it erases.")

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        """What a tenant sees of its job: everything but the callback URL (it may hold credentials)."""
        waiting = next((progress for progress in record.stages.values() if progress.waiting_for), None)
        return cls(status=record.state, waiting_for=waiting.waiting_for if waiting else None,
                   waiting_since=waiting.waiting_since if waiting else None,
                   **record.model_dump(exclude={"state", "callback_url"}))


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: object) -> object:
    """Only YYYY-MM-DD (pydantic would also take `0`, a Unix time)."""
    if isinstance(value, date) or (isinstance(value, str) and _DAY.fullmatch(value)):
        return value
    raise ValueError("expected a day as YYYY-MM-DD, e.g. 2026-12-03")


Day = Annotated[date, BeforeValidator(_day)]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    """Only what the OpenAPI `date-time` format allows (pydantic would also take `0.5`, a Unix
    time, or a date without a time); a leap second counts as the second before it."""
    if isinstance(value, datetime):
        return value
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("expected an RFC 3339 date-time with its offset, e.g. 2026-12-03T10:00:00Z")
    if match.group(1) == "60":
        value = value[:match.start(1)] + "59" + value[match.end(1):]
    return value


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]

# A page cursor: the last job's creation time and id, as JobPage.next gives it.
PAGE_KEY_PATTERN = r"^[0-9:.TZ+-]{10,40}\|[A-Za-z0-9_-]{1,128}$"


class JobPage(BaseModel):
    jobs: list[JobView]
    next: str | None = Field(None, description="Pass as `before` for the next page; null on the last one.")


class RedeliverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["failed", "completed"] = Field("failed", description="The jobs that ended so.")
    since: Rfc3339 = Field(description="Only jobs that ended (were last updated) at or after this time.")
    before: str | None = Field(None, pattern=PAGE_KEY_PATTERN, description="The `next` of the request before.")


class Redelivered(BaseModel):
    scheduled: int = Field(description="Webhooks put on the schedule, to be sent now.")
    next: str | None = Field(None, description="More jobs matched than one request schedules (10,000): send "
                                               "the request again with this as `before`.")

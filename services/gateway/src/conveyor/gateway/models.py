"""The gateway's request and response bodies (they shape the OpenAPI docs at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from conveyor.stores.base import Delivery, JobState, StageProgress


MAX_CONTENT_TYPE_CHARS = 200
# type/subtype, optional parameters; printable ASCII only, so no header or log line can be forged.
CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;[ -~]*)?$"


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=256, examples=["u1"])
    content: str = Field(min_length=1, description="Document text (or HTML).")
    content_type: str = Field("text/plain", max_length=MAX_CONTENT_TYPE_CHARS, pattern=CONTENT_TYPE_PATTERN,
                              description="e.g. text/plain or text/html.")
    callback_url: HttpUrl | None = Field(None, description="POSTed the signed result when done.")


class Accepted(BaseModel):
    job_id: str
    status: JobState
    status_url: str


class JobView(BaseModel):
    job_id: str
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

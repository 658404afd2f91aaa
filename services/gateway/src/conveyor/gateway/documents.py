"""Documents with identity: the `document_id` a tenant gives the versions of one document.

- Each version is a job that carries the document id and its content hash (the sha256 of the
  content type and the bytes). A version whose hash equals the document's last completed version
  completes at once with that version's summary (`unchanged_from` it): nothing runs, no model is
  called, and its callback hears `job.completed` like any other.
- Every version of a document has the same record key, so each stage handles them in submission
  order, one at a time; the embedder keeps the vectors of the newest (`conveyor.embedder.vectors`).
- `GET /documents/{id}` is the document as its newest completed version has it.
- `DELETE /documents/{id}` cancels its unfinished versions, deletes every version's blobs at once
  and sends an erasure down the pipeline behind them (the same key, so after them in every
  stage): the embedder deletes the document's vectors, and the last stage forgets every version's
  record (`conveyor.stores.documents`). It erases the versions submitted before it: one submitted
  while it travels is the document's next life, and stays. The erasure is a job of its own, to
  follow until it completes; its record keeps the document id and nothing of the content.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from conveyor.events import Event, Payload
from conveyor.stores.base import JobRecord, JobState, JobStore
from conveyor.stores.blobs import BlobStore


def content_sha256(content_type: str, content_digest: str) -> str:
    """A version's content hash: its bytes' sha256 (hex) under its content type (the same bytes
    declared as HTML or as plain text are different documents)."""
    return hashlib.sha256(f"{content_type}\n{content_digest}".encode()).hexdigest()


async def last_completed(store: JobStore, tenant: str, document_id: str) -> JobRecord | None:
    found = await store.list_jobs(tenant, document=document_id, state=JobState.completed, limit=1)
    return found[0] if found else None


class DocumentView(BaseModel):
    document_id: str
    versions: int = Field(description="Versions submitted and not erased.")
    latest_job_id: str = Field(description="The newest version's job.")
    current_job_id: str | None = Field(None, description="The newest completed version's job; its summary is the "
                                                         "document's.")
    summary: str | None = None
    content_sha256: str | None = Field(None, description="The newest completed version's content hash.")
    updated_at: datetime | None = Field(None, description="When the newest completed version completed.")


def view(document_id: str, found: list[JobRecord]) -> DocumentView:
    current = next((record for record in found if record.state == JobState.completed), None)
    return DocumentView(document_id=document_id, versions=len(found), latest_job_id=found[0].job_id,
                        current_job_id=current.job_id if current else None,
                        summary=current.summary if current else None,
                        content_sha256=current.content_sha256 if current else None,
                        updated_at=current.updated_at if current else None)


class ErasureAccepted(BaseModel):
    document_id: str
    job_id: str = Field(description="The erasure's job: completed once every stage has erased the document.")
    status_url: str
    versions: int = Field(description="Versions it erases.")


async def withdraw(store: JobStore, blobs: BlobStore, found: list[JobRecord]) -> None:
    """The first part of an erasure, at once: unfinished versions cancelled (no stage works on them
    from now on) and every version's blobs deleted."""
    for record in found:
        if not record.finished():
            record = await store.cancel(record.job_id) or record
        for blob in record.blobs:
            await blobs.delete(blob)


def erasure_event(first_stage: str, tenant: str, document_id: str, user_id: str, *, created_at: datetime) -> Event:
    """The erasure's event; `created_at` bounds the versions it erases (see the module docstring)."""
    return Event(job_id=f"erase-{uuid.uuid4().hex}", tenant=tenant, user_id=user_id[:256] or "-", stage=first_stage,
                 payload=Payload(), document_id=document_id, erasure=True, created_at=created_at)

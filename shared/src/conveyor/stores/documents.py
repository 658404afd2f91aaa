"""A document's versions in the job store, and forgetting them when the document is erased."""

from __future__ import annotations

from datetime import datetime

from conveyor.stores.base import JobRecord, JobStore
from conveyor.stores.blobs import BlobStore

VERSIONS_PAGE = 500


async def versions(store: JobStore, tenant: str, document_id: str) -> list[JobRecord]:
    """Every version of the tenant's document, newest first."""
    found: list[JobRecord] = []
    before = None
    while True:
        page = await store.list_jobs(tenant, document=document_id, before=before, limit=VERSIONS_PAGE)
        found += page
        if len(page) < VERSIONS_PAGE:
            return found
        before = page[-1].page_key()


async def forget(store: JobStore, blobs: BlobStore | None, tenant: str, document_id: str, *,
                 submitted_before: datetime) -> int:
    """Delete the blobs, then the record (with its submission, dead letters and scheduled
    delivery), of every version submitted before the erasure was; how many there were. A version
    submitted after it is a new life of the document and stays."""
    found = [record for record in await versions(store, tenant, document_id) if record.created_at <= submitted_before]
    for record in found:
        for blob in record.blobs if blobs is not None else ():
            await blobs.delete(blob)
        await store.discard(record.job_id)
    return len(found)

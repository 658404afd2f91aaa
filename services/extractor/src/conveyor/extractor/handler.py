"""Extractor handler: document bytes (inline or claim check) -> labelled blocks for the summarizer."""

from __future__ import annotations

from contextlib import AsyncExitStack

from conveyor.document import CONTENT_TYPE as DOCUMENT_TYPE
from conveyor.events import Event
from conveyor.extractor.extract import extract_text
from conveyor.isolation import IsolatedPool
from conveyor.kafka.stage import Stage
from conveyor.payloads import payload_bytes, text_payload
from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    # Documents are hostile: parse them in child processes that are killed past their deadline
    # and capped in memory, so one document fails alone and leaves the worker as it was.
    parsers = IsolatedPool(settings.resolved_parse_processes(), memory_mb=settings.parse_memory_mb,
                           preload="conveyor.extractor.extract")
    resources.push_async_callback(parsers.close)

    async def extract(event: Event) -> Event:
        source = event.payload
        data = await payload_bytes(source, blobs)
        extracted = await parsers.run(extract_text, data, content_type=source.content_type,
                                      filename=source.filename, timeout=settings.parse_timeout_seconds)
        document = extracted.document
        payload = await text_payload(document.encode().decode("utf-8"), blobs, content_type=DOCUMENT_TYPE,
                                     claim_check_bytes=settings.claim_check_bytes)
        meta = {**event.meta, "kind": extracted.kind, **extracted.meta}
        return event.next(payload=payload, meta=meta)

    return Stage("extractor", extract)

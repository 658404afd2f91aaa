"""Extractor handler: document bytes (inline or claim check) -> clean text for the summarizer."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from conveyor.events import Event
from conveyor.extractor.extract import extract_text
from conveyor.kafka.stage import Stage
from conveyor.payloads import payload_bytes, text_payload
from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    async def extract(event: Event) -> Event:
        source = event.payload
        data = await payload_bytes(source, blobs)
        # Parsing is CPU-bound library code: keep the event loop (heartbeats, other records) free.
        extracted = await asyncio.to_thread(
            extract_text, data, content_type=source.content_type, filename=source.filename
        )
        payload = await text_payload(extracted.text, blobs, claim_check_bytes=settings.claim_check_bytes)
        meta = {**event.meta, "kind": extracted.kind, "chars": len(extracted.text), **extracted.meta}
        return event.next("summarizer", payload=payload, meta=meta)

    return Stage("extractor", extract)

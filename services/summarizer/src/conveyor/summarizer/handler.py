"""Summarizer handler: the extracted document -> summary, through the configured backend (TextRank or an LLM)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from conveyor.document import Document
from conveyor.events import Event, Payload
from conveyor.kafka.stage import Stage
from conveyor.payloads import payload_bytes
from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore
from conveyor.summarizer.backends import make_backend
from conveyor.summarizer.text import cut_at_word


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    backend = make_backend(settings)
    resources.push_async_callback(backend.close)

    async def summarize(event: Event) -> Event:
        document = Document.decode(await payload_bytes(event.payload, blobs), event.payload.content_type)
        summary = await backend.summarize(document, sentences=settings.summary_sentences)
        # A text with no sentence ends is one long "sentence": the summary stays bounded anyway.
        summary_text, cut = cut_at_word(summary.text, settings.max_summary_chars)
        meta = {**event.meta, "backend": summary.backend, **summary.meta, **({"summary_truncated": True} if cut else {})}
        # The notifier needs only the summary: the text stays behind.
        return event.next(payload=Payload(), summary=summary_text, meta=meta)

    # Skipping finished jobs on redelivery saves a second LLM call.
    return Stage("summarizer", summarize, skip_done=True, blocked=backend.blocked)

"""Embedder handler: the extracted document -> its chunks' vectors in the vector store; the
document itself goes on unchanged to the next stage, with the chunk count in the job's meta. A
version of a document replaces the document's vectors; an erasure deletes them."""

from __future__ import annotations

from contextlib import AsyncExitStack

from conveyor.breakers import Breakers
from conveyor.document import Document
from conveyor.embedder.backends import make_backend
from conveyor.embedder.chunking import chunk_document
from conveyor.embedder.vectors import Owner, VectorStore
from conveyor.events import Event
from conveyor.kafka.stage import Stage
from conveyor.metrics import CHUNKS_EMBEDDED
from conveyor.payloads import payload_bytes
from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore


def build_stage(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
    backend = make_backend(settings)
    resources.push_async_callback(backend.close)
    vectors = VectorStore.open(settings, Breakers.from_settings(settings))
    resources.push_async_callback(vectors.close)

    async def embed(event: Event) -> Event:
        owner = Owner(event.tenant, event.job_id, event.document_id)
        version = event.created_at.timestamp()
        if owner.document_id is not None:
            written = await vectors.written_version(owner)
            if written is not None and written > version:
                # A newer version's vectors are there already (this one was replayed late, say).
                return event.next(meta={**event.meta, "vectors_superseded": True})
        document = Document.decode(await payload_bytes(event.payload, blobs), event.payload.content_type)
        chunks = chunk_document(document, settings.embed_chunk_chars)
        kept = chunks[:settings.embed_max_chunks]
        embeddings = await backend.embed([chunk.embedded_text for chunk in kept]) if kept else []
        await vectors.replace(owner, kept, embeddings, {
            "user_id": event.user_id, "kind": event.meta.get("kind"), "model": backend.model,
        }, version=version)
        CHUNKS_EMBEDDED.labels(backend.name).inc(len(kept))
        meta = {**event.meta, "embedded_chunks": len(kept), "embedding_model": backend.model,
                **({"chunks_not_embedded": len(chunks) - len(kept)} if len(chunks) > len(kept) else {})}
        return event.next(meta=meta)

    async def erase(event: Event) -> None:
        await vectors.erase(Owner(event.tenant, event.job_id, event.document_id),
                            versions_up_to=event.created_at.timestamp())

    def blocked() -> str | None:
        return backend.blocked() or vectors.blocked()

    # Redelivered records rewrite the same points, so finished jobs need not be skipped; skipping
    # them saves a second embedding call all the same.
    return Stage("embedder", embed, skip_done=True, blocked=blocked, erase=erase)

"""Claim check on both sides: read a payload wherever it lives, and park big ones in the blob store."""

from __future__ import annotations

from conveyor.events import Payload
from conveyor.stores.blobs import BlobStore


async def payload_bytes(payload: Payload, blobs: BlobStore) -> bytes:
    inline = payload.inline_bytes()
    if inline is not None:
        return inline
    if payload.blob is None:
        return b""
    return await blobs.get(payload.blob)


async def text_payload(text: str, blobs: BlobStore, *, claim_check_bytes: int,
                       content_type: str = "text/plain; charset=utf-8") -> Payload:
    """Inline text, or a blob reference once it reaches the claim-check size."""
    data = text.encode("utf-8")
    if len(data) >= claim_check_bytes:
        return Payload(blob=await blobs.put(data), content_type=content_type)
    return Payload(text=text, content_type=content_type)

"""Blob store for the claim-check pattern: big payloads live here, Kafka carries a `BlobRef`.

Writes stream in chunks so a large upload never sits in memory whole; reads verify size and
sha256 so a truncated or swapped blob is caught, not summarized.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterable
from pathlib import Path

from conveyor.errors import PermanentError
from conveyor.events import BlobRef


class BlobTooLarge(Exception):
    """The stream passed the caller's size limit; nothing was kept."""


class BlobStore(abc.ABC):
    scheme: str

    @abc.abstractmethod
    async def put_stream(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobRef:
        """Store a stream; raise BlobTooLarge past `max_bytes`."""

    @abc.abstractmethod
    async def _read(self, ref: BlobRef) -> bytes: ...

    @abc.abstractmethod
    async def delete(self, ref: BlobRef) -> None: ...

    async def put(self, data: bytes) -> BlobRef:
        async def one_chunk():
            yield data

        return await self.put_stream(one_chunk())

    async def get(self, ref: BlobRef) -> bytes:
        try:
            data = await self._read(ref)
        except FileNotFoundError as exc:
            raise PermanentError(f"blob {ref.uri} is missing") from exc
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PermanentError(f"blob {ref.uri} does not match its size/sha256")
        return data


class FileBlobStore(BlobStore):
    """Blobs as files under one folder; the default for a single machine."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    async def put_stream(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobRef:
        name = uuid.uuid4().hex
        partial = self.root / f".{name}.part"
        digest, size = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(f"payload exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            final = self.root / name
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        return BlobRef(uri=final.as_uri(), size=size, sha256=digest.hexdigest())

    def _path(self, ref: BlobRef) -> Path:
        path = Path(ref.uri.removeprefix("file://")).resolve()
        if path.parent != self.root:  # a reference must never read outside the store
            raise PermanentError(f"blob {ref.uri} is outside {self.root}")
        return path

    async def _read(self, ref: BlobRef) -> bytes:
        return await asyncio.to_thread(self._path(ref).read_bytes)

    async def delete(self, ref: BlobRef) -> None:
        self._path(ref).unlink(missing_ok=True)

"""The vector store the embedder writes to: Qdrant, embedded in the process (a folder, for one
machine) or a server (CONVEYOR_QDRANT_URL, on Kubernetes).

Chunks belong to an owner: a tenant's document (whichever version wrote them) or, without a
document id, a job. An owner's chunk `i` is always the same point, its id derived from the owner
and `i`, so a redelivered record, or a new version of the document, overwrites the vectors instead
of adding copies; chunks beyond the new count are deleted. Each point's payload names its tenant,
job and document, so searches are filtered to one tenant, and the version that wrote it, so an
older version (a dead letter replayed late) never overwrites a newer one's vectors.

A Qdrant server has its own circuit breaker: while it is down, the stage waits for it and the
records wait in the log, uncharged.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from conveyor.breakers import Breaker, Breakers, DependencyFailure
from conveyor.embedder.chunking import Chunk
from conveyor.errors import ConfigurationError, PermanentError, TransientError
from conveyor.settings import Settings

T = TypeVar("T")

# Fixed forever: point ids are derived from it, so changing it would duplicate every vector.
POINT_NAMESPACE = uuid.UUID("6f1c7d1e-5b0a-4c1e-9a7e-3c0f2d9b8a41")


@dataclass(frozen=True)
class Owner:
    """Whose chunks these are: the tenant's document, or the job when it names none."""

    tenant: str
    job_id: str
    document_id: str | None = None

    def point_id(self, chunk: int) -> str:
        owner = f"document:{self.document_id}" if self.document_id is not None else self.job_id
        return str(uuid.uuid5(POINT_NAMESPACE, f"{self.tenant}/{owner}/{chunk}"))

    def filter(self, *, from_chunk: int | None = None, versions_up_to: float | None = None) -> models.Filter:
        field, value = ("document_id", self.document_id) if self.document_id is not None else ("job_id", self.job_id)
        must: list[models.Condition] = [
            models.FieldCondition(key="tenant", match=models.MatchValue(value=self.tenant)),
            models.FieldCondition(key=field, match=models.MatchValue(value=value)),
        ]
        if from_chunk is not None:
            must.append(models.FieldCondition(key="chunk", range=models.Range(gte=from_chunk)))
        if versions_up_to is not None:
            must.append(models.FieldCondition(key="version", range=models.Range(lte=versions_up_to)))
        return models.Filter(must=must)


class VectorStore:
    def __init__(self, client: AsyncQdrantClient, collection: str, *, name: str, breaker: Breaker | None,
                 max_chunks: int) -> None:
        self._client = client
        self._max_chunks = max_chunks
        self.collection = collection
        self.name = name  # "qdrant <host>:<port>" or "qdrant (local)": no credentials
        self._breaker = breaker
        self._dimension: int | None = None

    @classmethod
    def open(cls, settings: Settings, breakers: Breakers) -> VectorStore:
        if settings.qdrant_url:
            key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            # No version check: it is a blocking request at construction, made before the breaker guards anything.
            client = AsyncQdrantClient(url=settings.qdrant_url, api_key=key, timeout=settings.qdrant_timeout_seconds,
                                       check_compatibility=False)
            name = f"qdrant {_host(settings.qdrant_url)}"
            return cls(client, settings.qdrant_collection, name=name, breaker=breakers[name],
                       max_chunks=settings.embed_max_chunks)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            # A pod's folder is its own and goes with it: replicas would each keep part of the vectors.
            raise ConfigurationError("on Kubernetes the embedder needs a Qdrant server: set CONVEYOR_QDRANT_URL "
                                     "(the chart's vectorStore.qdrantUrl)")
        path = settings.resolved_qdrant_path()
        path.mkdir(parents=True, exist_ok=True)
        return cls(AsyncQdrantClient(path=str(path)), settings.qdrant_collection, name="qdrant (local)", breaker=None,
                   max_chunks=settings.embed_max_chunks)

    def blocked(self) -> str | None:
        return self.name if self._breaker is not None and self._breaker.is_open else None

    async def replace(self, owner: Owner, chunks: Sequence[Chunk], vectors: Sequence[list[float]],
                      payload: dict[str, Any], *, version: float = 0.0) -> None:
        """The owner's chunks are exactly these, with these vectors; `version` (the submission
        time of the job that wrote them) is kept with each."""
        if vectors:
            await self._ensure_collection(len(vectors[0]))
            points = [
                models.PointStruct(id=owner.point_id(chunk.index), vector=vector, payload={
                    **payload, "tenant": owner.tenant, "job_id": owner.job_id, "document_id": owner.document_id,
                    "version": version, "chunk": chunk.index, "heading": chunk.heading, "text": chunk.text,
                })
                for chunk, vector in zip(chunks, vectors)
            ]
            await self._call(lambda: self._client.upsert(self.collection, points=points, wait=True))
        elif not await self._collection_exists():
            return  # nothing was ever written, so nothing is left over
        await self._delete(owner, from_chunk=len(chunks))

    async def erase(self, owner: Owner, *, versions_up_to: float) -> None:
        """Every chunk of the owner written by a version submitted up to `versions_up_to` goes (a
        later version's are its next life). Rare, so the embedded store may scan for them."""
        if await self._collection_exists():
            selector = models.FilterSelector(filter=owner.filter(versions_up_to=versions_up_to))
            await self._call(lambda: self._client.delete(self.collection, points_selector=selector, wait=True))

    async def written_version(self, owner: Owner) -> float | None:
        """The version that wrote the owner's chunks (None: none are stored)."""
        if not await self._collection_exists():
            return None
        found = await self._call(lambda: self._client.retrieve(self.collection, [owner.point_id(0)],
                                                               with_payload=["version"]))
        return float((found[0].payload or {}).get("version", 0.0)) if found else None

    async def _delete(self, owner: Owner, *, from_chunk: int) -> None:
        """The owner's points from chunk `from_chunk` on. A server finds them by its payload
        indexes; the embedded store has none and would scan every point, so it is given their ids
        instead: every id a chunk index below the most chunks a document may have could take."""
        selector: models.FilterSelector | models.PointIdsList
        if self._breaker is not None:
            selector = models.FilterSelector(filter=owner.filter(from_chunk=from_chunk))
        else:
            selector = models.PointIdsList(points=[owner.point_id(i) for i in range(from_chunk, self._max_chunks)])
        await self._call(lambda: self._client.delete(self.collection, points_selector=selector, wait=True))

    async def count(self, owner: Owner) -> int:
        if not await self._collection_exists():
            return 0
        result = await self._call(lambda: self._client.count(self.collection, count_filter=owner.filter()))
        return result.count

    async def _collection_exists(self) -> bool:
        """Known once this process has written to it (no round trip per record), else asked."""
        return self._dimension is not None or await self._call(lambda: self._client.collection_exists(self.collection))

    async def _ensure_collection(self, dimension: int) -> None:
        if self._dimension == dimension:
            return
        if not await self._call(lambda: self._client.collection_exists(self.collection)):
            params = models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            try:
                await self._call(lambda: self._client.create_collection(self.collection, vectors_config=params))
            except PermanentError:
                if not await self._call(lambda: self._client.collection_exists(self.collection)):
                    raise  # not a concurrent creation by another worker
            if self._breaker is not None:  # a server filters by payload faster with indexes
                for field, schema in (("tenant", models.PayloadSchemaType.KEYWORD),
                                      ("job_id", models.PayloadSchemaType.KEYWORD),
                                      ("document_id", models.PayloadSchemaType.KEYWORD)):
                    await self._call(lambda: self._client.create_payload_index(self.collection, field, schema))
        info = await self._call(lambda: self._client.get_collection(self.collection))
        size = _vector_size(info)
        if size != dimension:
            # Every record would fail alike: they wait in the DLQ for `conveyor dlq replay` once it is fixed.
            raise PermanentError(
                f"collection {self.collection!r} in {self.name} holds vectors of size {size}, the embedding model "
                f"makes {dimension}: set CONVEYOR_QDRANT_COLLECTION to another collection")
        self._dimension = dimension

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        if self._breaker is None:
            return await _local(request)
        async with self._breaker.call():
            return await _classified(self.name, request)

    async def close(self) -> None:
        await self._client.close()


def _vector_size(info: models.CollectionInfo) -> int | None:
    vectors = info.config.params.vectors
    return vectors.size if isinstance(vectors, models.VectorParams) else None


async def _classified(name: str, request: Callable[[], Awaitable[T]]) -> T:
    """A server's failures: unreachable, timing out, 5xx or 429 is the server's (its breaker
    counts it); another 4xx is the request's."""
    try:
        return await request()
    except UnexpectedResponse as exc:
        if exc.status_code is not None and (exc.status_code >= 500 or exc.status_code in (408, 429)):
            raise DependencyFailure(f"{name} answered HTTP {exc.status_code}") from exc
        raise PermanentError(f"{name} rejected the request with HTTP {exc.status_code}: {exc.content[:200]!r}") from exc
    except ResponseHandlingException as exc:
        raise DependencyFailure(f"cannot reach {name}: {type(exc.source).__name__}") from exc


async def _local(request: Callable[[], Awaitable[T]]) -> T:
    """The embedded store fails only on bad requests and on its disk."""
    try:
        return await request()
    except (ValueError, AssertionError) as exc:
        raise PermanentError(f"local vector store refused the request: {exc}") from exc
    except OSError as exc:
        raise TransientError(f"local vector store: {exc}") from exc


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 6333)}"

"""The vector store the embedder writes to: Qdrant, embedded in the process (a folder, for one
machine) or a server (CONVEYOR_QDRANT_URL, on Kubernetes).

A job's chunk `i` is always the same point, its id derived from tenant, job and `i`, so a
redelivered record overwrites its own vectors instead of adding copies; chunks a shorter version
of the job left beyond the new count are deleted. Each point's payload names its tenant and job,
so searches are filtered to one tenant.

A Qdrant server has its own circuit breaker: while it is down, the stage waits for it and the
records wait in the log, uncharged.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
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


def point_id(tenant: str, job_id: str, chunk: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant}/{job_id}/{chunk}"))


def _job_filter(tenant: str, job_id: str, *, from_chunk: int | None = None) -> models.Filter:
    must: list[models.Condition] = [
        models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
        models.FieldCondition(key="job_id", match=models.MatchValue(value=job_id)),
    ]
    if from_chunk is not None:
        must.append(models.FieldCondition(key="chunk", range=models.Range(gte=from_chunk)))
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

    async def replace(self, tenant: str, job_id: str, chunks: Sequence[Chunk], vectors: Sequence[list[float]],
                      payload: dict[str, Any]) -> None:
        """The job's chunks are exactly these, with these vectors."""
        if vectors:
            await self._ensure_collection(len(vectors[0]))
            points = [
                models.PointStruct(id=point_id(tenant, job_id, chunk.index), vector=vector, payload={
                    **payload, "tenant": tenant, "job_id": job_id, "chunk": chunk.index,
                    "heading": chunk.heading, "text": chunk.text,
                })
                for chunk, vector in zip(chunks, vectors)
            ]
            await self._call(lambda: self._client.upsert(self.collection, points=points, wait=True))
        elif not await self._call(lambda: self._client.collection_exists(self.collection)):
            return  # nothing was ever written, so nothing is left over
        stale = self._beyond(tenant, job_id, len(chunks))
        await self._call(lambda: self._client.delete(self.collection, points_selector=stale, wait=True))

    def _beyond(self, tenant: str, job_id: str, count: int) -> models.FilterSelector | models.PointIdsList:
        """The job's points from chunk `count` on. A server finds them by its payload indexes; the
        embedded store has none and would scan every point, so it is given their ids instead:
        every id a chunk index below the most chunks a document may have could take."""
        if self._breaker is not None:
            return models.FilterSelector(filter=_job_filter(tenant, job_id, from_chunk=count))
        return models.PointIdsList(points=[point_id(tenant, job_id, i) for i in range(count, self._max_chunks)])

    async def count(self, tenant: str, job_id: str) -> int:
        result = await self._call(lambda: self._client.count(self.collection, count_filter=_job_filter(tenant, job_id)))
        return result.count

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
                                      ("job_id", models.PayloadSchemaType.KEYWORD)):
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

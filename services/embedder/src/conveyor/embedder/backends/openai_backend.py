"""Embeddings from an OpenAI-compatible endpoint (OpenAI, vLLM, TEI, Ollama...): one call per batch
of texts, inside the endpoint's pace and circuit breaker (`conveyor.openai_endpoints` classifies
its failures: an endpoint that is down or rate limiting is waited out, never charged to the
record)."""

from __future__ import annotations

from openai.types import CreateEmbeddingResponse

from conveyor.breakers import Breakers
from conveyor.errors import TransientError
from conveyor.metrics import LLM_LATENCY
from conveyor.openai_endpoints import open_endpoint, paced_call
from conveyor.settings import Settings
from conveyor.usage import charge

from .base import EmbeddingBackend


class OpenAIEmbeddings(EmbeddingBackend):
    name = "openai"

    def __init__(self, settings: Settings, *, breakers: Breakers | None = None) -> None:
        self.model = settings.embeddings_model
        self._batch = settings.embed_batch_size
        self.endpoint = open_endpoint(settings, settings.embeddings_base_url, self.model,
                                      breakers or Breakers.from_settings(settings), kind="embeddings")

    def blocked(self) -> str | None:
        return self.endpoint.name if self.endpoint.breaker.is_open else None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch):
            batch = texts[start:start + self._batch]
            estimate = sum(len(text) for text in batch) // 4
            response = await paced_call(self.endpoint, lambda: self._create(batch), tokens=estimate,
                                        observe=self._observe)
            charge(response.usage.prompt_tokens if response.usage else estimate)
            vectors.extend(_vectors(response, len(batch)))
        return vectors

    async def _create(self, batch: list[str]) -> CreateEmbeddingResponse:
        return await self.endpoint.client.embeddings.create(model=self.model, input=batch)

    def _observe(self, outcome: str, seconds: float) -> None:
        LLM_LATENCY.labels(backend="openai-embeddings", outcome=outcome).observe(seconds)

    async def close(self) -> None:
        await self.endpoint.client.close()


def _vectors(response: CreateEmbeddingResponse, expected: int) -> list[list[float]]:
    """The answer's vectors in input order; an answer that does not hold one per text is retried."""
    data = sorted(response.data or [], key=lambda item: item.index)
    if len(data) != expected or [item.index for item in data] != list(range(expected)):
        raise TransientError(f"embeddings endpoint answered {len(data)} vectors for {expected} texts")
    vectors = [list(item.embedding) for item in data]
    if len({len(vector) for vector in vectors}) != 1 or not vectors[0]:
        raise TransientError("embeddings endpoint answered vectors of different or zero sizes")
    return vectors

"""Embedding backends: the packaged all-MiniLM-L6-v2 (offline) or an OpenAI-compatible
embeddings endpoint, chosen by settings."""

from __future__ import annotations

from conveyor.settings import Settings

from .base import EmbeddingBackend

__all__ = ["EmbeddingBackend", "make_backend"]


def make_backend(settings: Settings) -> EmbeddingBackend:
    """The backend `settings.embedder_backend` names; its modules are imported only when used."""
    if settings.embedder_backend == "minilm":
        from .minilm import MiniLMBackend

        return MiniLMBackend(settings)
    if settings.embedder_backend == "openai":
        from .openai_backend import OpenAIEmbeddings

        return OpenAIEmbeddings(settings)
    raise ValueError(f"unknown embedder backend {settings.embedder_backend!r}")

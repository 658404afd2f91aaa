"""Summarizer backends: offline TextRank or an OpenAI-compatible LLM, chosen by settings."""

from __future__ import annotations

from conveyor.settings import Settings

from .base import Summary, SummarizerBackend

__all__ = ["Summary", "SummarizerBackend", "make_backend"]


def make_backend(settings: Settings) -> SummarizerBackend:
    """The backend `settings.summarizer_backend` names; its modules are imported only when used."""
    if settings.summarizer_backend == "textrank":
        from .textrank import TextRankBackend

        return TextRankBackend(settings)
    if settings.summarizer_backend == "openai":
        from .openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    raise ValueError(f"unknown summarizer backend {settings.summarizer_backend!r}")

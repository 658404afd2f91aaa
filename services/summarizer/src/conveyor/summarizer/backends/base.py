"""The interface every summarizer backend implements, and the summary it returns."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from conveyor.document import Document


@dataclass(frozen=True)
class Summary:
    """A summary: its text, its sentences, the backend that wrote it, and facts about the run."""

    text: str
    sentences: list[str]
    backend: str
    meta: dict[str, Any] = field(default_factory=dict)


class SummarizerBackend(abc.ABC):
    """Turns text into a summary of about `sentences` sentences; owns its pools and clients."""

    name: str

    @abc.abstractmethod
    async def summarize(self, document: Document, *, sentences: int) -> Summary:
        """Summarize `document` in at most `sentences` sentences; raise TransientError to retry
        later, PermanentError to give up."""

    def blocked(self) -> str | None:
        """The dependency every summary needs while it is down (None: nothing is)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release processes, connections and other resources; the backend is unusable after."""

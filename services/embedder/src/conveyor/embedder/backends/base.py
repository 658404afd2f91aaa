"""The interface every embedding backend implements."""

from __future__ import annotations

import abc


class EmbeddingBackend(abc.ABC):
    """Turns texts into vectors of one model; owns its threads and clients."""

    name: str
    model: str

    @abc.abstractmethod
    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order; raise TransientError to retry later, PermanentError to
        give up, DependencyUnavailable while the model's server is down."""

    def blocked(self) -> str | None:
        """The dependency every record needs while it is down (None: nothing is)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release threads and connections; the backend is unusable after."""

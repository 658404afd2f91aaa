"""Which offsets of a partition are still in the window, and how far the committed position may go.

Records finish out of order; the position that may be committed is the lowest offset not yet
done (or one past the highest seen when all are done), so a crash redelivers unfinished work and
never skips it.
"""

from __future__ import annotations

import heapq


class PartitionOffsets:
    """The in-window offsets of one partition."""

    def __init__(self) -> None:
        self._outstanding: set[int] = set()
        self._heap: list[int] = []  # lazily pruned: may hold offsets already finished
        self._next: int | None = None
        self._committed: int | None = None

    def __len__(self) -> int:
        return len(self._outstanding)

    def track(self, offset: int) -> None:
        """A fetched record entered the window."""
        if offset in self._outstanding:
            return
        self._outstanding.add(offset)
        heapq.heappush(self._heap, offset)
        self._next = offset + 1 if self._next is None else max(self._next, offset + 1)

    def finish(self, offset: int) -> None:
        """The record reached a durable outcome (output produced, skipped or dead-lettered)."""
        self._outstanding.discard(offset)

    def position(self) -> int | None:
        """The offset to commit: the lowest one not done, or one past the highest seen."""
        while self._heap and self._heap[0] not in self._outstanding:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else self._next

    def pending_commit(self) -> int | None:
        """The position, when it has moved since the last commit."""
        position = self.position()
        return position if position is not None and position != self._committed else None

    def committed(self, position: int) -> None:
        self._committed = position

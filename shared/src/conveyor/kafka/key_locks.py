"""One lock per record key, held only while some record of that key is in the window."""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyLocks:
    """`async with locks.hold(key)` runs the records of one key one after another; records
    without a key run freely. A key's lock is dropped when its last holder leaves."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: bytes | None) -> _Held:
        return _Held(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    # A plain class, not @asynccontextmanager: this runs for every record.
    __slots__ = ("_locks", "_key", "_lock")

    def __init__(self, locks: dict[bytes, tuple[asyncio.Lock, int]], key: bytes | None) -> None:
        self._locks, self._key, self._lock = locks, key, None

    async def __aenter__(self) -> None:
        if self._key is None:
            return
        lock, users = self._locks.get(self._key) or (asyncio.Lock(), 0)
        self._locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise
        self._lock = lock

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._lock is not None:
            self._lock.release()
            self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]  # type: ignore[index]
        if users == 1:
            del self._locks[self._key]  # type: ignore[arg-type]
        else:
            self._locks[self._key] = (lock, users - 1)  # type: ignore[index]

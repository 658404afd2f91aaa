"""`GET /jobs/{id}/events`: a job's progress pushed as server-sent events until it ends.

The stream opens with a `status` event (the job as `GET /jobs/{id}` shows it), then sends a
`stage` event each time a stage changes state (or its attempts or the dependency it waits for
change) and a `job` event each time the job's status changes, in the order they are seen, and
ends with an `end` event holding the final status once the job is completed, failed or
cancelled. Changes are read from the job store every CONVEYOR_EVENT_STREAM_POLL_SECONDS, so two
changes between reads arrive as one (a stage seen `done` may never have been seen `running`).
A comment line every 15 s keeps idle proxies from closing the connection. Each tenant may hold
CONVEYOR_TENANT_MAX_EVENT_STREAMS streams open per gateway process; a stream lasts at most
CONVEYOR_EVENT_STREAM_MAX_SECONDS, after which the client reconnects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from conveyor.gateway.models import JobView
from conveyor.stores.base import JobRecord, JobState

ENDED = frozenset({JobState.completed, JobState.failed, JobState.cancelled})
HEARTBEAT_SECONDS = 15.0
STREAM_RETRY_AFTER_SECONDS = 5  # a tenant at its bound of open streams tries again after this


class TooManyStreams(Exception):
    pass


class StreamSlots:
    """Open streams per tenant, bounded."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._open: Counter[str] = Counter()

    def acquire(self, tenant: str) -> Callable[[], None]:
        """Take a slot; returns its release (safe to call twice)."""
        if self._open[tenant] >= self.per_tenant:
            raise TooManyStreams(f"tenant {tenant} has {self.per_tenant} event streams open; close one first")
        self._open[tenant] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[tenant] -= 1
                if not self._open[tenant]:
                    del self._open[tenant]

        return release

    def open(self, tenant: str) -> int:
        return self._open[tenant]


class EventStream(StreamingResponse):
    """A text/event-stream response that gives its slot back however it ends: finished,
    disconnected, or never started."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], *, release: Callable[[], None] = lambda: None) -> None:
        # No caching and no proxy buffering: each event is worth something only when it arrives.
        super().__init__(content, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def changes(before: JobRecord | None, after: JobRecord) -> list[tuple[str, dict[str, Any]]]:
    """The `stage` and `job` events that take a client from `before` to `after`."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, progress in after.stages.items():
        seen = before.stages.get(name) if before else None
        if seen is None or (seen.state, seen.attempts, seen.waiting_for) != \
                (progress.state, progress.attempts, progress.waiting_for):
            found.append(("stage", {"stage": name, **progress.model_dump(mode="json")}))
    if before is None or before.state != after.state:
        found.append(("job", {"status": after.state.value, "error": after.error,
                              "at": after.updated_at.isoformat()}))
    return found


def frame(event: str, data: dict[str, Any], number: int) -> bytes:
    return f"id: {number}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_events(read: Callable[[], Awaitable[JobRecord | None]], first: JobRecord, *, poll_seconds: float,
                     max_seconds: float) -> AsyncIterator[bytes]:
    """The stream of one job, from `first` (its record when the stream opened) to its end."""
    number = 0

    def next_frame(event: str, data: dict[str, Any]) -> bytes:
        nonlocal number
        number += 1
        return frame(event, data, number)

    yield next_frame("status", JobView.of(first).model_dump(mode="json"))
    seen, started = first, time.monotonic()
    last_sent = started
    while seen.state not in ENDED:
        if time.monotonic() - started >= max_seconds:
            return  # the client reconnects for more
        await asyncio.sleep(poll_seconds)
        current = await read()
        if current is None:  # erased meanwhile: nothing more will happen to it
            return
        for event, data in changes(seen, current):
            yield next_frame(event, data)
            last_sent = time.monotonic()
        seen = current
        if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
    yield next_frame("end", JobView.of(seen).model_dump(mode="json"))

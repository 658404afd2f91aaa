"""What model calls cost, counted where they are made and summed per tenant and day.

A backend calls `charge(tokens, calls)` after each call that was answered (the tokens the server
reported, or those it computed itself). The stage runtime counts each run of a handler apart
(`counting()`: a context variable, so calls made in tasks the handler starts count too) and writes
the run's total to the job store with the job's tenant and the UTC day it ended. Failed and
retried runs are counted: what they spent was spent. Calls that were not answered cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass
class Tally:
    tokens: int = 0
    calls: int = 0

    @property
    def spent(self) -> bool:
        return bool(self.tokens or self.calls)


@dataclass(frozen=True)
class UsageTotal:
    tokens: int = 0
    calls: int = 0
    jobs: int = 0  # jobs that spent anything


_CURRENT: ContextVar[Tally | None] = ContextVar("conveyor_usage", default=None)


def charge(tokens: int, calls: int = 1) -> None:
    """Count an answered call toward the handler run in progress (outside one: nothing)."""
    tally = _CURRENT.get()
    if tally is not None:
        tally.tokens += max(0, tokens)
        tally.calls += max(0, calls)


@contextmanager
def counting() -> Iterator[Tally]:
    """Count what the code run, and the tasks created, inside the block spends."""
    tally = Tally()
    token = _CURRENT.set(tally)
    try:
        yield tally
    finally:
        _CURRENT.reset(token)


def day_of(moment: datetime) -> str:
    """The UTC day, YYYY-MM-DD, that usage at `moment` counts toward."""
    return moment.astimezone(UTC).date().isoformat()


def next_day(moment: datetime) -> datetime:
    """When the UTC day of `moment` ends (a daily budget resets)."""
    start = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + timedelta(days=1)

"""Where a running `conveyor up` can be reached, so that the other commands find it unasked.

`conveyor up` writes `<CONVEYOR_HOME>/up.json` (its broker's address, its gateway's URL and every
process's metrics URL) once everything is started and removes it when it stops. A command reads it
only when the user has not named the broker or gateway, and only while the process that wrote it
is alive. `<CONVEYOR_HOME>/up.lock` is held for as long as `conveyor up` runs, so a second one on
the same home (the same job store, keys and logs) refuses to start.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

FILE_NAME = "up.json"
LOCK_NAME = "up.lock"


class AlreadyRunning(Exception):
    """Another `conveyor up` holds this home."""


@dataclass(frozen=True)
class Running:
    pid: int
    bootstrap_servers: str
    gateway_url: str
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> its /metrics URL
    pipeline_stages: list[str] | None = None  # the stages it runs, in order (None: the defaults)
    topic_prefix: str | None = None


def hold(home: Path) -> IO[str]:
    """Take the home for this `conveyor up` until the returned file is closed (or the process
    ends, however it ends)."""
    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / LOCK_NAME, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        other = find(home)
        raise AlreadyRunning(f"another `conveyor up`{f' (pid {other.pid})' if other else ''} is running with "
                             f"the home {home}: stop it, or give this one another CONVEYOR_HOME") from None
    return lock


def record(home: Path, *, bootstrap_servers: str, gateway_url: str, metrics: dict[str, str],
           pipeline_stages: list[str], topic_prefix: str) -> Path:
    path = home / FILE_NAME
    path.write_text(json.dumps(asdict(Running(os.getpid(), bootstrap_servers, gateway_url, metrics,
                                              pipeline_stages, topic_prefix))))
    return path


def find(home: Path) -> Running | None:
    """The running `conveyor up` of this home, or None (none started, or it died)."""
    try:
        running = Running(**json.loads((home / FILE_NAME).read_text()))
        os.kill(running.pid, 0)
    except (OSError, ValueError, TypeError):
        return None
    return running


def home_from_environment() -> Path:
    """CONVEYOR_HOME as the settings read it (default .conveyor), without validating the rest."""
    return Path(os.environ.get("CONVEYOR_HOME", ".conveyor"))

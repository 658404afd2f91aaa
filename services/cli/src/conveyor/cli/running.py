"""Where a running `conveyor up` can be reached, so that the other commands find it unasked.

`conveyor up` writes `<CONVEYOR_HOME>/up.json` (its broker's address and its gateway's URL) once
everything is started and removes it when it stops. A command reads it only when the user has not
named the broker or gateway, and only while the process that wrote it is alive.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "up.json"


@dataclass(frozen=True)
class Running:
    pid: int
    bootstrap_servers: str
    gateway_url: str


def record(home: Path, *, bootstrap_servers: str, gateway_url: str) -> Path:
    path = home / FILE_NAME
    path.write_text(json.dumps(asdict(Running(os.getpid(), bootstrap_servers, gateway_url))))
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

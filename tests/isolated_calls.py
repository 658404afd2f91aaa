"""Functions the isolation tests run in child processes (importable there by module path)."""

from __future__ import annotations

import os
import signal
import time

from conveyor.errors import PermanentError


def pid() -> int:
    return os.getpid()


def hang() -> None:
    time.sleep(3600)


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def refuse() -> None:
    raise PermanentError("not a document")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)

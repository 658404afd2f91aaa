"""Run untrusted parsing in child processes that can be killed and are memory-capped.

A thread cannot be stopped and shares the worker's memory: a parser that never returns, or a
document that inflates to gigabytes, would wedge or bloat the whole worker. Here each call runs
in one of a few long-lived child processes, under an address-space limit (RLIMIT_AS) and a
deadline. A call that runs past its deadline, is cancelled, runs out of memory or kills its
process fails alone: its process is killed and replaced, and the others carry on.

Children are forked from a fork server that has imported the parsers once, so a replacement
costs milliseconds, not the second of CPU a fresh interpreter spends importing them. A call still
running after `background_after` seconds (a poison document, or just a big one) moves to the
background: its process is lowered in CPU priority (`BACKGROUND_NICENESS`) and a new child takes
its place in the pool, so the documents behind it do not wait for it and get the CPU first; it
keeps its deadline, and its process goes when it ends. At most `processes` calls are in the
background at once; past that, a long call keeps its place until one of them ends (checked every
`background_after` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
BACKGROUND_AFTER_SECONDS = 0.25  # far beyond a page of HTML or text, well within a big PDF
# Nice 10 weighs about a tenth of a normal process: on a busy machine a background parse still
# gets some CPU, so a big legitimate document is slowed, not starved past its deadline.
BACKGROUND_NICENESS = 10


class IsolatedCallFailed(Exception):
    """The isolated call did not return a result."""


class CallTimedOut(IsolatedCallFailed):
    pass


class CallOutOfMemory(IsolatedCallFailed):
    pass


class ChildDied(IsolatedCallFailed):
    pass


def die_with_parent(parent: int | None = None) -> None:
    """Linux: the kernel kills this child when the worker dies, even by SIGKILL. A child that
    starts slowly can outlive its `parent` (pid) before it asks: it leaves at once then."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(conn: Connection, preload: str | None, memory_mb: int, worker: int) -> None:
    # Forked by the fork server, which exits when the worker does: the kernel then kills this.
    die_with_parent()
    try:
        os.kill(worker, 0)
    except ProcessLookupError:  # the worker died before the signal was asked for
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when its children stop
    if preload:
        importlib.import_module(preload)
    if memory_mb:
        # The cap is on what the calls may add to the process as it stands after the imports.
        limit = _address_space_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except MemoryError:
            outcome = ("memory", None)
        except Exception as exc:  # noqa: BLE001 - the caller gets every error of the call
            outcome = ("error", exc)
        try:
            conn.send(outcome)
        except MemoryError:
            conn.send(("memory", None))
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or error
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class _Child:
    def __init__(self, context: Any, preload: str | None, memory_mb: int) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child, args=(child_conn, preload, memory_mb, os.getpid()),
                                       daemon=True)
        self.process.start()
        child_conn.close()
        # The thread waiting on a call owns the connection until it returns: closing it under
        # that wait would free the descriptor for reuse by the next child's pipe.
        self._lock = threading.Lock()
        self._busy = self._killed = False
        self.background = False
        self.promotion: asyncio.TimerHandle | None = None  # moving its running call to the background

    def lower_priority(self) -> None:
        with contextlib.suppress(OSError):  # gone already
            pid = self.process.pid
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, pid) + BACKGROUND_NICENESS))
        self.background = True

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
        """Blocking: send the call, wait for its outcome or the deadline."""
        with self._lock:
            if self._killed:
                raise ChildDied("the parser process was stopped")
            self._busy = True
        try:
            return self._call(fn, args, kwargs, timeout)
        finally:
            with self._lock:
                self._busy = False
                if self._killed:
                    self.conn.close()

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
        self.conn.send((fn, args, kwargs))
        if not self.conn.poll(timeout):
            raise CallTimedOut(f"parsing ran past its deadline of {timeout:g}s and was killed")
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1)
            raise ChildDied(f"the parser process died (exit code {self.process.exitcode})") from None
        if kind == "memory":
            raise CallOutOfMemory("parsing needed more memory than CONVEYOR_PARSE_MEMORY_MB allows")
        if kind == "error":
            raise value
        return value

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        with self._lock:
            self._killed = True
            if not self._busy:
                self.conn.close()


class IsolatedPool:
    """`processes` children, each running one call at a time (see the module docstring)."""

    def __init__(self, processes: int, *, memory_mb: int, preload: str | None = None,
                 background_after: float = BACKGROUND_AFTER_SECONDS) -> None:
        self._context = multiprocessing.get_context("forkserver")
        # Never the worker's __main__ (the default): the server would run its module-level code.
        # Only the server's first start reads this: a second pool with other modules in the same
        # process imports them in each child instead (see _child).
        self._context.set_forkserver_preload([preload] if preload else [])
        self._memory_mb = memory_mb
        self._preload = preload
        self._processes = processes
        self._background_after = background_after
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._closed = False
        for _ in range(processes):
            self._add()

    def _add(self) -> None:
        if self._closed:  # a call that ends after close() is not replaced
            return
        child = _Child(self._context, self._preload, self._memory_mb)
        self._children.add(child)
        self._idle.put_nowait(child)

    async def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any) -> Any:
        child = await self._idle.get()
        healthy = False
        self._promote_later(child)
        try:
            result = await asyncio.to_thread(child.call, fn, args, kwargs, timeout)
            healthy = True
            return result
        except IsolatedCallFailed:
            raise
        except asyncio.CancelledError:
            raise  # the stage's deadline: the child is killed below, which ends the thread's wait
        except Exception:
            healthy = True  # the call raised; the child is fine
            raise
        finally:
            child.promotion.cancel()
            if child.background:  # its place in the pool was taken when it moved there
                self._retire(child)
            elif healthy:
                self._idle.put_nowait(child)
            else:
                self._replace(child)

    def _promote_later(self, child: _Child) -> None:
        child.promotion = asyncio.get_running_loop().call_later(self._background_after, self._to_background, child)

    def _to_background(self, child: _Child) -> None:
        """A long call: its process yields the CPU to the others, and a new child takes its place."""
        if self._closed:
            return
        if sum(other.background for other in self._children) >= self._processes:
            # Asked again until a place frees up: a long call must not keep its pool slot for
            # the rest of its deadline because others were long at the same moment.
            self._promote_later(child)
            return
        child.lower_priority()
        self._add()

    def _retire(self, child: _Child) -> None:
        child.kill()
        self._children.discard(child)

    def _replace(self, child: _Child) -> None:
        self._retire(child)
        self._add()

    async def close(self) -> None:
        self._closed = True
        for child in list(self._children):
            child.kill()
        self._children.clear()

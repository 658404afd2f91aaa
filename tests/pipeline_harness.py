"""Runs the real gateway and worker processes for end-to-end tests, each test on its own topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conveyor.cli.embedded_broker import free_port
from conveyor.cli.local_credentials import local_api_key
from conveyor.credentials import add_key


def wait_until_ready(url: str, *, timeout: float) -> bool:
    """Poll the gateway's /readyz until it answers 200; False when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@dataclass
class Pipeline:
    bootstrap: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_key: str = ""
    operations_port: int = 0  # the gateway's metrics and docs; picked when it starts

    def __post_init__(self) -> None:
        # As `conveyor up` does: the default tenant's key in <home>/api-key, which the CLI uses.
        self.api_key = local_api_key(self.home, self.home / "api-keys.json")[0]

    def add_key(self, tenant: str) -> str:
        """A new API key of `tenant`, in the key file the gateway reads."""
        return add_key(self.home / "api-keys.json", tenant, name="test")[0]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    @property
    def client(self) -> httpx.Client:
        """An HTTP client of the gateway that sends the default tenant's key."""
        if getattr(self, "_client", None) is None:
            self._client = httpx.Client(base_url=self.url, headers=self.headers, timeout=30)
        return self._client

    @property
    def operations_url(self) -> str:
        return f"http://127.0.0.1:{self.operations_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONVEYOR_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONVEYOR_TOPIC_PREFIX": self.prefix,
            "CONVEYOR_HOME": str(self.home),
            "CONVEYOR_GATEWAY_PORT": str(self.port),
            "CONVEYOR_SESSION_TIMEOUT_MS": "6000",
            "CONVEYOR_PARTITIONS": "4",
            "CONVEYOR_RETRY_BASE_SECONDS": "0.05",
            "CONVEYOR_RETRY_MAX_SECONDS": "0.5",
            "CONVEYOR_TEXTRANK_PROCESSES": "1",
            "CONVEYOR_LAG_INTERVAL_SECONDS": "0",
            "CONVEYOR_WEBHOOK_SECRET": "test-secret",
            **self.extra_env,
        }

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", *args],
                                   env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_gateway(self) -> None:
        self.operations_port = self.operations_port or free_port()
        self.start("gateway", "gateway", env={"CONVEYOR_METRICS_PORT": str(self.operations_port)})
        if not wait_until_ready(self.url, timeout=30):
            raise TimeoutError(f"gateway not ready; log:\n{self.log('gateway')}")

    def start_worker(self, stage: str, index: int = 1, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start(f"{stage}-{index}", "worker", stage, env=env)

    def start_all(self, workers: int = 1) -> "Pipeline":
        self.start_gateway()
        for stage in ("extractor", "summarizer", "notifier"):
            for index in range(1, workers + 1):
                self.start_worker(stage, index)
        return self

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        process = self.processes.pop(name)
        process.send_signal(sig)
        return process.wait(timeout)

    def stop_all(self) -> None:
        for name in list(self.processes):
            if self.processes[name].poll() is None:
                try:
                    self.stop(name)
                except subprocess.TimeoutExpired:
                    self.processes.get(name, subprocess.Popen).kill()  # type: ignore[union-attr]
            self.processes.pop(name, None)

    def submit(self, content: str, **extra: object) -> str:
        response = httpx.post(f"{self.url}/submit", json={"user_id": "u1", "content": content, **extra},
                              headers=self.headers, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.url}/jobs/{job_id}", headers=self.headers, timeout=30).json()

    def wait_for(self, job_ids: list[str], *, timeout: float = 120, states: tuple[str, ...] = ("completed",)) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        pending, done = set(job_ids), {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = self.job(job_id)
                assert "status" in job, job  # an error answer, not a job
                if job["status"] in states:
                    done[job_id] = job
                    pending.discard(job_id)
            if pending:
                time.sleep(0.3)
        if pending:
            sample = self.job(next(iter(pending)))
            logs = "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in list(self.processes))
            raise TimeoutError(f"{len(pending)} job(s) not {states}; e.g. {sample}\n{logs}")
        return done

"""A real Prometheus for tests: scrapes given targets every second and answers PromQL queries.

    with PrometheusServer(["127.0.0.1:9100"]) as prom:
        prom.wait_for("conveyor_events_consumed_total > 0")
        prom.query("sum(conveyor_consumer_lag)")

Runs the Debian `prometheus` binary on 127.0.0.1 with a generated config and a temporary storage
folder; both disappear when the block ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from conveyor.cli.embedded_broker import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

Result = list[dict[str, Any]]


class PrometheusServer:
    """Context manager around one Prometheus process.

    targets: `host:port` strings (one job named `conveyor`), or {job name: [host:port, ...]}.
    file_sd: files in Prometheus' file_sd format (e.g. `.conveyor/prometheus-targets.json`, written
    by `conveyor up`), scraped as job `conveyor-file-sd`.
    rule_files: rules files to evaluate every `evaluation_interval`.
    """

    def __init__(self, targets: Sequence[str] | Mapping[str, Sequence[str]] = (), *,
                 file_sd: Iterable[str | Path] = (), rule_files: Iterable[str | Path] = (),
                 scrape_interval: str = "1s", evaluation_interval: str = "1s",
                 startup_timeout: float = 30.0) -> None:
        self.jobs = dict(targets) if isinstance(targets, Mapping) else ({"conveyor": list(targets)} if targets else {})
        self.file_sd = [str(Path(p).resolve()) for p in file_sd]
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        scrape_configs: list[dict[str, Any]] = [
            {"job_name": job, "static_configs": [{"targets": list(hosts)}]} for job, hosts in self.jobs.items()
        ]
        if self.file_sd:
            scrape_configs.append({"job_name": "conveyor-file-sd",
                                   "file_sd_configs": [{"files": self.file_sd, "refresh_interval": "5s"}]})
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.evaluation_interval},
            "rule_files": self.rule_files,
            "scrape_configs": scrape_configs,
        }

    def start(self) -> PrometheusServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="prometheus-test-")
        tmp = Path(self._tmp.name)
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {self.startup_timeout}s: {self.logs()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except (AttributeError, OSError):
            return ""

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data` of a successful answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> Result:
        """Instant query; the `result` list ([{'metric': {...}, 'value': [ts, 'str']}] for vectors)."""
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query that returns at most one series."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{expr} returned {len(result)} series")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def wait_for(self, expr: str, predicate: Callable[[Result], bool] = bool, *, timeout: float = 30.0,
                 interval: float = 0.25) -> Result:
        """Poll `expr` until `predicate(result)` holds (default: any series); returns that result."""
        deadline = time.monotonic() + timeout
        result: Result = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expr!r} did not match within {timeout}s; last result {result}; "
                                   f"targets {[(t['scrapeUrl'], t['health'], t['lastError']) for t in self.targets()]}")
            time.sleep(interval)

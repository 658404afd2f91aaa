"""`conveyor up`: the embedded broker, the gateway and worker processes on one machine.

Each service is a child process running `python -m conveyor.<service>`, the same program its
container runs. The embedded broker starts empty, so what the job store holds (unfinished jobs,
dead letters) is put back on it at start (`conveyor.cli.redrive`). A child that dies is
restarted; so is the broker, on the same address, after which the store's work is put back again:
the broker's events are gone, the store's record of the work is not. The workers are killed as soon
as the broker is found dead and started again after the re-drive: their positions and commits
refer to events that no longer exist, and a stale commit on the new broker would skip new ones.
Ctrl-C or SIGTERM stops the children (they commit and leave their groups), then the broker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.cli import running
from conveyor.cli.embedded_broker import EmbeddedBroker, free_port
from conveyor.cli.services import service_argv
from conveyor.cli.local_credentials import local_api_key, local_webhook_secret
from conveyor.cli.redrive import restore
from conveyor.cli.pipeline_file import local_env
from conveyor.isolation import die_with_parent
from conveyor.pipeline import PipelineSpec, StageSpec
from conveyor.settings import Settings

log = logging.getLogger("conveyor.up")
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        out = open(self.log_path, "ab")
        # Logs go to the child's log file; with --trace-console its spans (printed on stdout) go to
        # the terminal `conveyor up` runs in.
        console = self.env.get("CONVEYOR_TRACE_CONSOLE", "").lower() in ("1", "true", "yes")
        # die_with_parent: a SIGKILLed `conveyor up` takes its children with it.
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=None if console else out,
                                        stderr=out if console else subprocess.STDOUT,
                                        preexec_fn=functools.partial(die_with_parent, os.getpid()))
        self.started_at = time.monotonic()


def stage_argv(stage: StageSpec) -> list[str]:
    """What runs one worker of the stage here: the user's handler or command, else the built-in
    stage's service (ServiceNotInstalled when there is none of that name)."""
    if stage.handler is not None:
        return [sys.executable, "-m", "conveyor.custom_stage", stage.name, stage.handler]
    if stage.command is not None:
        return [*stage.command, *(stage.args or ())]
    return service_argv(stage.name)


def plan_children(pipeline: PipelineSpec, workers: dict[str, int], *, base_metrics_port: int, log_dir: Path,
                  env: dict[str, str]) -> list[Child]:
    # The gateway sends to the pipeline's first stage and lists every stage in a job's status.
    gateway_env = {**env, "CONVEYOR_PIPELINE_STAGES": ",".join(s.name for s in pipeline.stages),
                   "CONVEYOR_TOPIC_PREFIX": pipeline.kafka.topic_prefix}
    # The gateway's metrics and API docs are on its own port, the first of the range.
    children = [Child("gateway", service_argv("gateway"), {**gateway_env, "CONVEYOR_METRICS_PORT": str(base_metrics_port)},
                      log_dir / "gateway.log")]
    port = base_metrics_port + 1
    for stage in pipeline.stages:
        argv = stage_argv(stage)
        stage_env, _ = local_env(pipeline, stage)
        for index in range(workers[stage.name]):
            child_env = {**env, **stage_env, "CONVEYOR_METRICS_PORT": str(port)}
            children.append(Child(f"{stage.name}-{index + 1}", argv, child_env,
                                  log_dir / f"{stage.name}-{index + 1}.log"))
            port += 1
    return children


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As the servers bind: a port held only by closing connections (TIME_WAIT) counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def write_prometheus_targets(path: Path, children: list[Child]) -> None:
    """File-based service discovery for a local Prometheus (see scripts/prometheus-local.yml)."""
    groups = []
    for child in children:
        port = child.env.get("CONVEYOR_METRICS_PORT")
        if port:
            labels = {"service": "gateway"} if child.name == "gateway" else \
                {"service": child.name.rsplit("-", 1)[0], "instance_name": child.name}
            groups.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    path.write_text(json.dumps(groups, indent=2))


def _kill(children: list[Child]) -> None:
    """SIGKILL, so that nothing they hold is committed on the way out."""
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.kill()
    for child in children:
        if child.process:
            child.process.wait()


class Supervisor:
    def __init__(self, settings: Settings, pipeline: PipelineSpec, *, workers: dict[str, int],
                 base_metrics_port: int, embedded: bool) -> None:
        self.pipeline = pipeline
        # What the supervisor itself does (topics, re-drives) follows the pipeline, not the defaults.
        self.settings = settings.model_copy(update={"pipeline_stages": [s.name for s in pipeline.stages],
                                                    "topic_prefix": pipeline.kafka.topic_prefix})
        self.workers = workers
        self.base_metrics_port = base_metrics_port
        self.embedded = embedded
        self.stopping = False
        self._broker_attempts = 0
        self._broker_retry_at = 0.0
        self._redrive_pending = False

    def run(self) -> int:
        service_argv("gateway")  # a missing service stops us before anything starts
        for stage in self.pipeline.stages:
            stage_argv(stage)
            _, unresolved = local_env(self.pipeline, stage)
            if unresolved:
                print(f"conveyor up: stage {stage.name}: {', '.join(unresolved)} come from Kubernetes (valueFrom); "
                      "set them in this shell if the stage needs them", file=sys.stderr, flush=True)
        home = self.settings.home.resolve()
        try:
            lock = running.hold(home)
        except running.AlreadyRunning as exc:
            print(f"conveyor up: {exc}", file=sys.stderr)
            return 2
        with lock:
            return self._run(home)

    def _run(self, home: Path) -> int:
        taken = self._taken_ports()
        if taken:
            print(f"conveyor up: {taken}", file=sys.stderr)
            return 2
        log_dir = home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        broker = None
        # Worker probes answer on loopback only: this is one machine, not a pod network.
        env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_METRICS_HOST": "127.0.0.1"}
        webhook_key = None
        if not env.get("CONVEYOR_WEBHOOK_SECRET"):
            env["CONVEYOR_WEBHOOK_SECRET"], webhook_key = local_webhook_secret(home)
        _, api_key = local_api_key(home, self.settings.resolved_api_keys_file())
        recovery: Settings | None = None  # how to reach the broker and the job store, to restore them
        if self.embedded:
            broker = EmbeddedBroker(self._broker_port(), log_path=log_dir / "broker.log").start()
            env["CONVEYOR_BOOTSTRAP_SERVERS"] = broker.bootstrap
            recovery = self.settings.model_copy(update={"bootstrap_servers": broker.bootstrap, "home": home})
            # It starts empty: what the job store holds from earlier runs goes back on it.
            try:
                jobs, letters = asyncio.run(restore(recovery, self.pipeline))
            except Exception as exc:  # noqa: BLE001 - the pipeline still runs; say what was not restored
                print(f"conveyor up: could not put the job store's unfinished jobs and dead letters back "
                      f"({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
            else:
                if jobs or letters:
                    print(f"re-published {jobs} unfinished job(s) and {letters} dead letter(s) from the job "
                          f"store of {home}", flush=True)
        bootstrap = env.get("CONVEYOR_BOOTSTRAP_SERVERS", self.settings.bootstrap_servers)
        children = plan_children(self.pipeline, self.workers, base_metrics_port=self.base_metrics_port,
                                 log_dir=log_dir, env=env)
        write_prometheus_targets(home / "prometheus-targets.json", children)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        up_file: Path | None = None
        try:
            for child in children:
                child.start()
            url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"
            up_file = running.record(home, bootstrap_servers=bootstrap, gateway_url=url, metrics={
                child.name: f"http://127.0.0.1:{child.env['CONVEYOR_METRICS_PORT']}/metrics" for child in children},
                pipeline_stages=self.settings.pipeline_stages, topic_prefix=self.settings.topic_prefix)
            self._print_banner(bootstrap, broker is not None, children, log_dir, home, webhook_key, api_key)
            while not self.stopping:
                if broker and recovery:
                    self._keep_broker_up(broker, recovery, workers=children[1:])
                self._restart_dead(children)
                time.sleep(0.5)
        finally:
            if up_file:
                up_file.unlink(missing_ok=True)
            self._stop_children(children)
            if broker:
                broker.stop()
                print("embedded broker stopped (its in-memory data is gone)", flush=True)
        return 0

    def _taken_ports(self) -> str | None:
        """What stands in the way of the ports this run needs (another program, or a second
        `conveyor up`), as a line that says what to change; None when they are all free."""
        gateway = (self.settings.gateway_host, self.settings.gateway_port)
        if not port_is_free(*gateway):
            return (f"the gateway port {gateway[1]} on {gateway[0]} is taken (another program, or a second "
                    "`conveyor up`?): stop it, or choose another with CONVEYOR_GATEWAY_PORT")
        ports = self._metrics_ports()
        if gateway[1] in ports:
            return (f"the gateway port {gateway[1]} is inside the metrics ports {ports.start}-{ports.stop - 1}: "
                    "choose another CONVEYOR_GATEWAY_PORT or --metrics-port")
        busy = [port for port in ports if not port_is_free("127.0.0.1", port)]
        if busy:
            return (f"metrics port(s) {', '.join(map(str, busy))} are taken: choose another range "
                    f"with --metrics-port (this run needs {len(ports)} from {self.base_metrics_port})")
        return None

    def _metrics_ports(self) -> range:
        """The gateway's, then each worker's."""
        return range(self.base_metrics_port, self.base_metrics_port + 1 + sum(self.workers.values()))

    def _broker_port(self) -> int:
        """A free port that none of this run's processes is about to bind (a random one could be)."""
        planned = {self.settings.gateway_port, *self._metrics_ports()}
        port = free_port()
        while port in planned:
            port = free_port()
        return port

    def _request_stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            print(f"\n{signal.Signals(signum).name} received: stopping workers, gateway and broker...", flush=True)
        self.stopping = True

    def _keep_broker_up(self, broker: EmbeddedBroker, settings: Settings, *, workers: list[Child]) -> None:
        """Restart a dead broker on its address, re-drive the unfinished jobs, then start the
        workers again; each step is retried with a growing pause until it succeeds."""
        if self.stopping or time.monotonic() < self._broker_retry_at:
            return
        code = broker.exit_code()
        try:
            if code is not None:
                if not self._redrive_pending:
                    print(f"embedded broker exited with code {code}; restarting it on {broker.bootstrap} and "
                          f"the {len(workers)} workers after it (the events it held are gone: the job store "
                          "re-drives its unfinished jobs)", flush=True)
                    _kill(workers)
                    self._redrive_pending = True
                broker.start()
            if self._redrive_pending:
                jobs, letters = asyncio.run(restore(settings, self.pipeline))
                self._redrive_pending, self._broker_attempts = False, 0
                for worker in workers:
                    worker.start()
                print(f"embedded broker is back on {broker.bootstrap}; re-published {jobs} unfinished job(s) "
                      f"and {letters} dead letter(s) from the job store", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure: try again later, the jobs are in the store
            delay = min(MAX_RESTART_DELAY_SECONDS, RESTART_DELAY_SECONDS * 2 ** self._broker_attempts)
            self._broker_attempts += 1
            self._broker_retry_at = time.monotonic() + delay
            print(f"embedded broker recovery failed ({type(exc).__name__}: {exc}); trying again in {delay:g}s",
                  flush=True)

    def _restart_dead(self, children: list[Child]) -> None:
        for child in children:
            code = child.process.poll() if child.process else None
            if code is None or self.stopping or self._redrive_pending:  # workers wait for the re-drive
                continue
            # Crash loops back off exponentially instead of spinning.
            delay = min(MAX_RESTART_DELAY_SECONDS, RESTART_DELAY_SECONDS * 2 ** child.restarts)
            if time.monotonic() - child.started_at < delay:
                continue
            child.restarts += 1
            print(f"{child.name} exited with code {code}; restarting (restart #{child.restarts}, "
                  f"log: {child.log_path})", flush=True)
            child.start()

    def _stop_children(self, children: list[Child]) -> None:
        # Workers first, so they commit and leave their groups while the broker is still up.
        live = [c for c in children if c.process and c.process.poll() is None]
        for child in live:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in live:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{child.name} did not stop within 30s; killing it", flush=True)
                child.process.kill()
                child.process.wait()
        print(f"stopped {len(live)} process(es)", flush=True)

    def _print_banner(self, bootstrap: str, embedded: bool, children: list[Child], log_dir: Path,
                      home: Path, webhook_key: Path | None, api_key: Path) -> None:
        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"
        operations = f"http://127.0.0.1:{children[0].env['CONVEYOR_METRICS_PORT']}"
        lines = [
            "Conveyor is starting:",
            f"  broker     {bootstrap}" + (" (embedded, in memory)" if embedded else ""),
            f"  gateway    {url}  (docs {operations}/docs, metrics {operations}/metrics)",
        ]
        for child in children[1:]:
            lines.append(f"  {child.name:<10} metrics http://127.0.0.1:{child.env['CONVEYOR_METRICS_PORT']}/metrics")
        lines += [
            f"  logs       {log_dir}",
            f"  state      {home}",
            f"  prometheus targets {home / 'prometheus-targets.json'}",
            f"  API key    {api_key} (tenant default; the conveyor command uses it by itself)",
            *([f"  webhook master secret {webhook_key} (`conveyor webhook-secret` prints a tenant's)"]
              if webhook_key else []),
            "",
            f"Try: curl -X POST {url}/submit -H \"authorization: Bearer $(cat {api_key})\" "
            "-H 'content-type: application/json' -d '{\"user_id\":\"u1\",\"content\":\"...\"}'",
            "Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)

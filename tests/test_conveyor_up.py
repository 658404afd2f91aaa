"""`conveyor up` as a user runs it: everything starts, a job goes through, SIGTERM stops it all."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from conveyor.cli.embedded_broker import free_port
from conveyor.cli.supervisor import port_is_free
from documents import english_text
from pipeline_harness import wait_until_ready

pytestmark = pytest.mark.slow


def gateway_and_metrics_ports(count: int = 8) -> tuple[int, int]:
    """A gateway port and the first of `count` free metrics ports that do not include it, below the
    ephemeral range: there, no outgoing connection of the suite takes one of them meanwhile."""
    port = free_port()
    while True:
        base = random.randrange(20_000, 30_000)
        ports = range(base, base + count)
        if port not in ports and all(port_is_free("127.0.0.1", p) for p in ports):
            return port, base


def not_completed_within(client: httpx.Client, jobs: list[str], seconds: float) -> set[str]:
    """The jobs still not completed after waiting up to `seconds` for them."""
    deadline = time.monotonic() + seconds
    pending = set(jobs)
    while pending and time.monotonic() < deadline:
        pending = {job for job in pending if client.get(f"/jobs/{job}").json()["status"] != "completed"}
        time.sleep(0.5)
    return pending


def test_up_runs_the_pipeline_and_stops_cleanly(tmp_path) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state"), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_SESSION_TIMEOUT_MS": "6000", "CONVEYOR_TEXTRANK_PROCESSES": "1"}
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--workers", "2", "--summarizers", "1",
                           "--metrics-port", str(metrics_base)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, timeout=60), "conveyor up: gateway never became ready"
        children = psutil.Process(up.pid).children()
        # broker + gateway + 2 extractors + 1 summarizer + 2 notifiers
        assert len(children) == 7, [c.cmdline() for c in children]

        submit = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "submit", "-", "--wait", "--url", url,
                                 "--timeout", "90"], input=english_text(seed=42), env=env, capture_output=True,
                                text=True, timeout=120)
        assert submit.returncode == 0, submit.stderr
        job_id, summary = submit.stdout.strip().split("\n", 1)
        assert summary.strip() and summary.strip().split(". ")[0] in english_text(seed=42)
        assert "completed" in submit.stderr  # progress lines

        # The other commands find the running instance by themselves: its random broker port and
        # its gateway, named nowhere in their environment.
        plain = {k: v for k, v in env.items() if k not in ("CONVEYOR_GATEWAY_PORT", "CONVEYOR_BOOTSTRAP_SERVERS")}
        topics = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "topics"], env=plain,
                                capture_output=True, text=True, timeout=60)
        assert topics.returncode == 0, topics.stderr
        assert "conveyor.extract" in topics.stdout and "missing" not in topics.stdout
        status = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "status", job_id], env=plain,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "completed"

        targets = json.loads((tmp_path / "state" / "prometheus-targets.json").read_text())
        assert {t["labels"]["service"] for t in targets} == {"gateway", "extractor", "summarizer", "notifier"}

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        output = up.stdout.read()
        assert f"gateway    {url.replace('127.0.0.1', '127.0.0.1')}" in output
        assert "stopped 6 process(es)" in output
        # Webhooks are signed with secrets derived from a master made for this home, and the CLI
        # authenticates with a key made for it: never a known default.
        key_file = tmp_path / "state" / "webhook-secret"
        assert key_file.read_text().startswith("whsec_") and key_file.stat().st_mode & 0o777 == 0o600
        assert f"webhook master secret {key_file}" in output
        api_key = tmp_path / "state" / "api-key"
        assert api_key.read_text().startswith("cvk_") and api_key.stat().st_mode & 0o777 == 0o600
        assert f"API key    {api_key}" in output
        assert not (tmp_path / "state" / "up.json").exists(), "a stopped instance is not advertised"
        assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
    finally:
        if up.poll() is None:
            up.kill()


def test_a_notifier_without_a_webhook_secret_refuses_to_start_in_one_line(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_WEBHOOK_SECRET"}
    result = subprocess.run([sys.executable, "-m", "conveyor.notifier"], env={**env, "CONVEYOR_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "CONVEYOR_WEBHOOK_SECRET is not set" in result.stderr


@pytest.mark.parametrize("clash", ["gateway", "metrics"])
def test_a_taken_port_stops_up_at_once_with_one_line(tmp_path, clash: str) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    holder = socket.create_server(("127.0.0.1", port if clash == "gateway" else metrics_base))
    try:
        env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state"), "CONVEYOR_GATEWAY_PORT": str(port)}
        result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base)],
                                env=env, capture_output=True, text=True, timeout=30)
    finally:
        holder.close()
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    expected = f"gateway port {port}" if clash == "gateway" else f"metrics port(s) {metrics_base}"
    assert line.startswith("conveyor up: ") and expected in line
    assert not (tmp_path / "state" / "logs").exists(), "nothing was started"


def test_a_gateway_port_inside_the_metrics_ports_is_refused_in_one_line(tmp_path) -> None:
    base = free_port()
    env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state"), "CONVEYOR_GATEWAY_PORT": str(base + 2)}
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(base)],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"conveyor up: the gateway port {base + 2} is inside the metrics ports "
                                     f"{base}-{base + 3}: choose another CONVEYOR_GATEWAY_PORT or --metrics-port")


def test_trace_console_prints_spans_in_the_terminal_of_up(tmp_path) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state"), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_SESSION_TIMEOUT_MS": "6000", "CONVEYOR_TEXTRANK_PROCESSES": "1"}
    terminal = open(tmp_path / "terminal.txt", "w")  # read at the end: a pipe nobody drains would fill
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--trace-console",
                           "--metrics-port", str(metrics_base)], env=env, stdout=terminal,
                          stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, timeout=60), "conveyor up: gateway never became ready"
        submit = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "submit", "-", "--wait", "--url", url,
                                 "--timeout", "90"], input=english_text(seed=7), env=env, capture_output=True,
                                text=True, timeout=120)
        assert submit.returncode == 0, submit.stderr
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        terminal.close()
    output = (tmp_path / "terminal.txt").read_text()
    assert '"trace_id"' in output and "extractor" in output, "spans reached the terminal"
    assert '"trace_id"' not in (tmp_path / "state" / "logs" / "extractor-1.log").read_text()


def test_a_sigkilled_up_leaves_nothing_running(tmp_path) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state"), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_TEXTRANK_PROCESSES": "1"}
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}", timeout=60), "conveyor up: gateway never became ready"
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 5  # broker, gateway, three workers (and their pools)
    finally:
        up.kill()
        up.wait()
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [c.cmdline()[:3] for c in alive]


def test_a_sigkilled_broker_costs_no_job(tmp_path) -> None:
    """300 jobs, the embedded broker killed while they are in flight: `up` restarts it on its
    address, re-drives the unfinished jobs from the job store, and every job completes."""
    port, metrics_base = gateway_and_metrics_ports()
    home = tmp_path / "state"
    env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_TEXTRANK_PROCESSES": "1", "CONVEYOR_SESSION_TIMEOUT_MS": "6000",
           # The test polls 300 jobs a second; two records at a time per worker keeps work in flight.
           "CONVEYOR_TENANT_REQUESTS_PER_SECOND": "10000", "CONVEYOR_CONCURRENCY": "2"}
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, timeout=60), "conveyor up: gateway never became ready"
        headers = {"authorization": f"Bearer {(home / 'api-key').read_text().strip()}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            jobs = []
            for seed in range(300):
                answer = client.post("/submit", json={"user_id": "u", "content": english_text(seed=seed, sentences=5)})
                assert answer.status_code == 202, answer.text
                jobs.append(answer.json()["job_id"])
            (broker,) = [c for c in psutil.Process(up.pid).children() if "--listener-url" in c.cmdline()]
            deadline = time.monotonic() + 60  # mid-run: a tenth of a sample of the jobs is done
            while time.monotonic() < deadline and \
                    sum(client.get(f"/jobs/{job}").json()["status"] == "completed" for job in jobs[::10]) < 3:
                time.sleep(0.02)
            broker.kill()
            done_before = sum(client.get(f"/jobs/{job}").json()["status"] == "completed" for job in jobs)

            pending = not_completed_within(client, jobs, 240)
        assert not pending, f"{len(pending)} of 300 jobs never completed"
        assert 5 <= done_before < 300  # the broker died with work in flight
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert "embedded broker exited with code -9" in output, output[-3000:]
    republished = int(re.search(r"re-published (\d+) unfinished job", output).group(1))
    assert 0 < republished <= 300 - done_before  # what had completed is not done again


def test_a_second_up_on_the_same_home_refuses_in_one_line(tmp_path) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    home = tmp_path / "state"
    env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_TEXTRANK_PROCESSES": "1"}
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}", timeout=60), "conveyor up: gateway never became ready"
        other_port, other_metrics = gateway_and_metrics_ports()
        second = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(other_metrics)],
                                env={**env, "CONVEYOR_GATEWAY_PORT": str(other_port)}, capture_output=True, text=True,
                                timeout=30)
        # What is running is published for the other commands (and people), metrics included.
        published = json.loads((home / "up.json").read_text())
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert line == (f"conveyor up: another `conveyor up` (pid {up.pid}) is running with the home {home}: "
                    "stop it, or give this one another CONVEYOR_HOME")
    assert published["metrics"]["gateway"] == f"http://127.0.0.1:{metrics_base}/metrics"
    assert set(published["metrics"]) == {"gateway", "extractor-1", "summarizer-1", "notifier-1"}


def test_dead_letters_and_unfinished_jobs_outlive_a_restart_of_up(tmp_path) -> None:
    port, metrics_base = gateway_and_metrics_ports()
    home = tmp_path / "state"
    env = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_GATEWAY_PORT": str(port),
           "CONVEYOR_TEXTRANK_PROCESSES": "1", "CONVEYOR_CONCURRENCY": "1"}
    argv = [sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base)]
    url = f"http://127.0.0.1:{port}"

    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until_ready(url, timeout=60), "conveyor up: gateway never became ready"
        headers = {"authorization": f"Bearer {(home / 'api-key').read_text().strip()}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            unusable = client.post("/upload", data={"user_id": "u"}, files={
                "file": ("scan.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "text/plain")}).json()["job_id"]
            jobs = [client.post("/submit", json={"user_id": "u", "content": english_text(seed=seed, sentences=5)})
                    .json()["job_id"] for seed in range(60)]
            deadline = time.monotonic() + 60
            while client.get(f"/jobs/{unusable}").json()["status"] != "failed" and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0

    second = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until_ready(url, timeout=60), "conveyor up: gateway never came back"
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            pending = not_completed_within(client, jobs, 120)
        assert not pending, f"{len(pending)} of the first run's jobs never completed"
        listed = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "dlq", "list", "extractor"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and f"job={unusable}" in listed.stdout, listed.stderr
        replay = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "dlq", "replay", "extractor", "--job",
                                 unusable], env=env, capture_output=True, text=True, timeout=60)
        assert replay.returncode == 0 and "replayed 1 record(s)" in replay.stdout, replay.stderr
    finally:
        second.send_signal(signal.SIGTERM)
        output = second.communicate(timeout=60)[0]
    restored = re.search(r"re-published (\d+) unfinished job\(s\) and (\d+) dead letter\(s\)", output)
    assert restored and int(restored.group(2)) == 1, output[-2000:]

"""`conveyor up -f`: the Pipeline resource file that `kubectl apply` takes, run on this machine,
with built-in stages and a stage written as a plain Python function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from conveyor.cli.pipeline_file import default_pipeline, load_pipeline_file
from conveyor.pipeline import parse_spec
from documents import english_text
from pipeline_harness import wait_until_ready
from test_conveyor_up import gateway_and_metrics_ports

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "k8s/examples"


def _up(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, Path]:
    port, metrics_base = gateway_and_metrics_ports()
    home = tmp_path / "state"
    environment = {**os.environ, "CONVEYOR_HOME": str(home), "CONVEYOR_GATEWAY_PORT": str(port),
                   "CONVEYOR_TEXTRANK_PROCESSES": "1", "CONVEYOR_SESSION_TIMEOUT_MS": "6000",
                   "CONVEYOR_TENANT_REQUESTS_PER_SECOND": "10000", **(env or {})}
    up = subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "up", "--metrics-port", str(metrics_base), *args],
                          env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    if not wait_until_ready(url, timeout=60):
        up.kill()
        pytest.fail(f"conveyor up never became ready: {up.communicate()[0][-3000:]}")
    return up, url, home


def _stop(up: subprocess.Popen[str]) -> str:
    up.send_signal(signal.SIGTERM)
    return up.communicate(timeout=60)[0]


def _client(url: str, home: Path) -> httpx.Client:
    key = (home / "api-key").read_text().strip()
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=10)


def _wait_for_end(client: httpx.Client, jobs: list[str], seconds: float) -> dict[str, dict]:
    """Each job's status once none is queued or running any more (or `seconds` passed)."""
    deadline, ended = time.monotonic() + seconds, {}
    while len(ended) < len(jobs) and time.monotonic() < deadline:
        for job in jobs:
            if job not in ended:
                status = client.get(f"/jobs/{job}").json()
                if status["status"] in ("completed", "failed"):
                    ended[job] = status
        time.sleep(0.3)
    return ended


def test_the_built_in_pipeline_is_the_default_example_without_its_kubernetes_parts() -> None:
    _, built_in = default_pipeline()
    example = parse_spec(yaml.safe_load((EXAMPLES / "pipeline.yaml").read_text())["spec"])
    assert [(s.name, built_in.input_topic(s)) for s in built_in.stages] == \
        [(s.name, example.input_topic(s)) for s in example.stages]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_pipeline_file(path: Path) -> None:
    name, spec = load_pipeline_file(path)
    assert name and spec.stages


@pytest.mark.parametrize(("text", "says"), [
    ("kind: Deployment\n", "not a Pipeline resource"),
    ("apiVersion: conveyor.dev/v1alpha1\nkind: Pipeline\nspec: {stages: []}\n", "spec.kafka: Field required"),
    ("apiVersion: conveyor.dev/v1alpha1\nkind: Pipeline\nspec:\n  kafka: {bootstrapServers: x}\n"
     "  stages: [{name: Extractor, image: x}]\n", "spec.stages[0].name: String should match pattern"),
    ("stages: [\n", "not valid YAML at line 2"),
])
def test_a_bad_pipeline_file_stops_up_in_one_line_naming_the_problem(tmp_path: Path, text: str, says: str) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(text)
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "up", "-f", str(bad)],
                            env={**os.environ, "CONVEYOR_HOME": str(tmp_path / "state")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"conveyor up: {bad}: ") and says in line, line


def test_a_handler_that_cannot_be_loaded_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "stages.py").write_text("def handle(event):\n    return event\n")
    for handler, says in (("nowhere:handle", "module 'nowhere' was not found"),
                          ("stages:missing", "module 'stages' has no 'missing'"),
                          ("stages:handle", "must be an async function")):
        result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "worker", "redactor", "--handler", handler],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line == f"conveyor worker: --handler {handler}: {says}" or says in line, line


@pytest.mark.slow
def test_a_two_stage_pipeline_from_its_file_completes_200_jobs(tmp_path: Path) -> None:
    up, url, home = _up(tmp_path, "-f", str(EXAMPLES / "pipeline-extract-notify.yaml"), "--workers", "2")
    try:
        children = psutil.Process(up.pid).children()
        assert len(children) == 1 + 1 + 2 + 2, [c.cmdline() for c in children]  # broker, gateway, 2 + 2 workers
        with _client(url, home) as client:
            jobs = []
            for seed in range(200):
                answer = client.post("/submit", json={"user_id": "u", "content": english_text(seed=seed, sentences=4)})
                assert answer.status_code == 202, answer.text
                jobs.append(answer.json()["job_id"])
            ended = _wait_for_end(client, jobs, 180)
    finally:
        output = _stop(up)
    assert len(ended) == 200, f"{200 - len(ended)} jobs never ended: {output[-2000:]}"
    assert {status["status"] for status in ended.values()} == {"completed"}
    assert {tuple(status["stages"]) for status in ended.values()} == {("extractor", "notifier")}


@pytest.mark.slow
def test_the_embedder_pipeline_from_its_file_completes_200_jobs_with_one_point_per_chunk(tmp_path: Path) -> None:
    """extractor -> embedder -> summarizer -> notifier; the embedder is SIGKILLed mid-run, and the
    records it had in hand, delivered again, rewrite their points instead of adding copies."""
    up, url, home = _up(tmp_path, "-f", str(EXAMPLES / "pipeline-with-embedder.yaml"), "--workers", "2")
    try:
        children = psutil.Process(up.pid).children()
        embedders = [c for c in children if "conveyor.embedder" in c.cmdline()]
        assert len(embedders) == 1 and len(children) == 1 + 1 + 2 + 1 + 2 + 2  # one process: embedded Qdrant
        with _client(url, home) as client:
            jobs = []
            for seed in range(200):
                sentences = 60 if seed % 10 == 0 else 4  # every tenth document is several chunks
                answer = client.post("/submit", json={"user_id": "u", "content": english_text(seed=seed, sentences=sentences)})
                assert answer.status_code == 202, answer.text
                jobs.append(answer.json()["job_id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and client.get(f"/jobs/{jobs[20]}").json()["stages"]["embedder"]["state"] != "done":
                time.sleep(0.05)
            embedders[0].kill()
            ended = _wait_for_end(client, jobs, 300)
    finally:
        output = _stop(up)
    assert "embedder-1 exited with code -9; restarting" in output, output[-3000:]
    assert len(ended) == 200, f"{200 - len(ended)} jobs never ended: {output[-2000:]}"
    assert {status["status"] for status in ended.values()} == {"completed"}
    assert {tuple(status["stages"]) for status in ended.values()} == {("extractor", "embedder", "summarizer", "notifier")}
    chunks = {job: ended[job]["meta"]["embedded_chunks"] for job in jobs}
    assert all(count >= 1 for count in chunks.values()) and max(chunks.values()) > 3, chunks
    from qdrant_client import QdrantClient, models

    store = QdrantClient(path=str(home / "qdrant"))
    try:
        for job in jobs:
            only_job = models.Filter(must=[models.FieldCondition(key="job_id", match=models.MatchValue(value=job))])
            assert store.count("conveyor_chunks", count_filter=only_job).count == chunks[job], job
        assert store.count("conveyor_chunks").count == sum(chunks.values())
    finally:
        store.close()


REDACTOR = '''
import asyncio
import re

from conveyor.document import Document
from conveyor.errors import PermanentError


async def handle(event):
    """Counts the digits of the extracted text and completes the job with the text, digits hidden."""
    text = Document.decode((event.payload.text or "").encode(), event.payload.content_type).text
    if "FORBIDDEN" in text:
        raise PermanentError("this document may not be kept")
    await asyncio.sleep(0.05)  # some work, so that a worker killed mid-run has records in hand
    return event.next(summary=re.sub(r"[0-9]", "#", text)[:200], meta={"digits": len(re.findall(r"[0-9]", text))})
'''


@pytest.mark.slow
def test_a_stage_written_as_a_function_runs_survives_sigkill_and_dead_letters_its_permanent_errors(
        tmp_path: Path) -> None:
    (tmp_path / "redaction.py").write_text(textwrap.dedent(REDACTOR))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent("""\
        apiVersion: conveyor.dev/v1alpha1
        kind: Pipeline
        metadata: {name: redacted}
        spec:
          kafka: {bootstrapServers: 127.0.0.1:9092, topicPrefix: acme}
          stages:
            - {name: extractor, image: conveyor-extractor:0.1.0}
            - {name: redactor, image: acme/redactor:1, handler: "redaction:handle"}
        """))
    up, url, home = _up(tmp_path, "-f", str(pipeline))
    try:
        with _client(url, home) as client:
            jobs = []
            for seed in range(60):
                content = f"Order {seed} shipped on day {seed % 7}. " + english_text(seed=seed, sentences=3)
                answer = client.post("/submit", json={"user_id": "u", "content": content})
                jobs.append(answer.json()["job_id"])
            forbidden = client.post("/submit", json={"user_id": "u", "content": "FORBIDDEN text. " * 5}).json()["job_id"]
            (redactor,) = [c for c in psutil.Process(up.pid).children() if "redaction:handle" in c.cmdline()]
            deadline = time.monotonic() + 60  # mid-run: some jobs done, most not
            while time.monotonic() < deadline and \
                    sum(client.get(f"/jobs/{job}").json()["status"] == "completed" for job in jobs[::6]) < 2:
                time.sleep(0.05)
            redactor.kill()
            ended = _wait_for_end(client, [*jobs, forbidden], 180)
        dead = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "dlq", "list", "redactor"],
                              env={**os.environ, "CONVEYOR_HOME": str(home)}, capture_output=True, text=True,
                              timeout=60)
    finally:
        output = _stop(up)
    assert "redactor-1 exited with code -9; restarting" in output, output[-3000:]
    assert len(ended) == 61, output[-3000:]
    for job in jobs:
        assert ended[job]["status"] == "completed", (ended[job]["error"], ended[job]["stages"])
        assert list(ended[job]["stages"]) == ["extractor", "redactor"]
        assert ended[job]["summary"].startswith("Order #") and ended[job]["meta"]["digits"] >= 2
    assert ended[forbidden]["status"] == "failed" and "PermanentError" in ended[forbidden]["error"]
    assert dead.returncode == 0 and forbidden in dead.stdout, dead.stdout + dead.stderr

"""Outages are waited out, on the real broker: a dead LLM provider or webhook host holds the work
in the log, sees probes rather than a flood, and nothing fails or is dead-lettered for it."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import httpx
import pytest

from conveyor.cli.embedded_broker import free_port
from documents import english_text
from fakes.openai_server import FakeOpenAI, Received, Reply
from pipeline_harness import Pipeline
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow
SECRET = "test-secret"


class HealthWatch:
    """Polls a worker's /healthz in the background and remembers every answer that was not 200."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.bad: list[object] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                status: object = httpx.get(self.url, timeout=2).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.checks += 1
            if status != 200:
                self.bad.append(status)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


class Outage:
    """How the provider is down: answering 503, refusing connections, or answering 429 with Retry-After: 30."""

    def __init__(self, server: FakeOpenAI, mode: str) -> None:
        self.server, self.mode = server, mode
        self.down = threading.Event()
        server.fallback = self._answer

    def _answer(self, received: Received) -> Reply:
        if not self.down.is_set():
            return Reply.slow(0.05)
        return Reply.rate_limited(30) if self.mode == "429" else Reply.error(503)

    def begin(self) -> None:
        self.down.set()
        if self.mode == "refused":
            self.server.stop()

    def end(self) -> None:
        self.down.clear()
        if self.mode == "refused":
            self.server.start(self.server.port)


@pytest.mark.parametrize(("mode", "outage"), [("503", 120.0), ("refused", 60.0), ("429", 60.0)])
def test_an_llm_outage_fails_nothing_sees_only_probes_and_every_job_completes_after_it(
        broker: str, tmp_path, openai_server: FakeOpenAI, mode: str, outage: float) -> None:
    jobs = 200
    provider = Outage(openai_server, mode)
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_SUMMARIZER_BACKEND": "openai", "CONVEYOR_OPENAI_BASE_URL": openai_server.url,
        "CONVEYOR_MAX_ATTEMPTS": "3", "CONVEYOR_RETRY_MAX_SECONDS": "5",
    })
    try:
        pipeline.start_gateway()
        metrics_port = free_port()  # picked once the gateway holds its port, so it cannot be the same
        pipeline.start_worker("extractor")
        pipeline.start_worker("summarizer", env={"CONVEYOR_METRICS_PORT": str(metrics_port)})
        pipeline.start_worker("notifier")
        pipeline.wait_for([pipeline.submit(english_text(seed=1))], timeout=60)  # warm: the provider works

        with HealthWatch(metrics_port) as health:
            calls_before = openai_server.request_count
            provider.begin()
            ids = [pipeline.submit(english_text(seed=100 + i, sentences=6)) for i in range(jobs)]
            time.sleep(outage / 2)
            midway = [pipeline.job(job_id) for job_id in ids]
            time.sleep(outage / 2)
            calls_during = openai_server.request_count - calls_before  # refused ones never arrive
            provider.end()
            back = time.monotonic()
            done = pipeline.wait_for(ids, timeout=60)
            recovered_in = time.monotonic() - back

        assert len(done) == jobs
        # Those the summarizer holds show what they wait for; the rest are still in the log.
        held = [job for job in midway if job["status"] == "waiting"]
        assert held and {job["status"] for job in midway} <= {"waiting", "running"}
        assert {job["waiting_for"] for job in held} == {f"llm 127.0.0.1:{openai_server.port}/v1"}
        assert calls_during <= 60, calls_during
        assert recovered_in < 60
        assert metric(metrics_port, "conveyor_events_dead_lettered_total") == 0
        assert health.checks > outage and not health.bad, health.bad
    finally:
        pipeline.stop_all()


def test_a_webhook_host_down_for_90_s_gets_every_delivery_after_it_while_other_hosts_flow(
        broker: str, tmp_path) -> None:
    outage, jobs = 90.0, 40
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true", "CONVEYOR_WEBHOOK_SECRET": SECRET,
    })
    with WebhookReceiver(SECRET) as down, WebhookReceiver(SECRET) as healthy:
        try:
            pipeline.start_all()
            down.refuse()
            started = time.monotonic()
            waiting = [pipeline.submit(english_text(seed=300 + i), callback_url=down.url) for i in range(jobs)]
            flowing: list[str] = []
            restarted = False
            while time.monotonic() - started < outage:
                flowing.append(pipeline.submit(english_text(seed=400 + len(flowing)), callback_url=healthy.url))
                if not restarted and time.monotonic() - started > outage / 2:
                    # A restart during the wait loses nothing: the schedule is in the job store.
                    pipeline.stop("notifier-1")
                    pipeline.start_worker("notifier", 2)
                    restarted = True
                time.sleep(3)
            midway = pipeline.job(waiting[0])
            down.listen()
            back = time.time()
            pipeline.wait_for(waiting + flowing)
            deadline = time.monotonic() + 120
            while len(down.deliveries) < jobs and time.monotonic() < deadline:
                time.sleep(0.5)

            assert set(down.deliveries) == set(waiting)
            assert max(down.arrivals.values()) - back < 120
            assert all(down.ids[job_id] == {job_id} for job_id in waiting)  # one webhook-id per job
            assert midway["status"] == "completed" and midway["delivery"]["state"] == "waiting"
            assert all(pipeline.job(job_id)["delivery"]["state"] == "delivered" for job_id in waiting)
            # The healthy host's webhooks went out as their jobs completed, outage or not.
            late = {job_id: healthy.arrivals[job_id] - datetime.fromisoformat(pipeline.job(job_id)["updated_at"]).timestamp()
                    for job_id in flowing}
            assert set(healthy.deliveries) == set(flowing)
            assert max(late.values()) < 2, late
        finally:
            pipeline.stop_all()

"""Delivery guarantees with real processes: dead letters, replay, partition sharing, crash recovery."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conveyor.cli.kafka_commands import read_dead_letters
from conveyor.kafka.clients import make_producer
from conveyor.kafka.lag import group_lag
from conveyor.cli.embedded_broker import free_port
from conveyor.settings import Settings
from conveyor.topics import input_topic
from documents import english_text
from pipeline_harness import Pipeline
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow
SECRET = "test-secret"
GARBAGE = (b"\x00\xff\xfe garbage", b'{"json": "but not an event"}', b"")


def pipeline_settings(pipeline: Pipeline) -> Settings:
    return Settings(bootstrap_servers=pipeline.bootstrap, topic_prefix=pipeline.prefix, home=pipeline.home)


def run_cli(pipeline: Pipeline, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], env=pipeline.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def pipeline(broker: str, tmp_path):
    running = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true", "CONVEYOR_WEBHOOK_SECRET": SECRET, "CONVEYOR_MAX_ATTEMPTS": "3",
    })
    yield running
    running.stop_all()


def test_garbage_bytes_go_to_the_dlq_and_the_worker_keeps_going(pipeline: Pipeline) -> None:
    pipeline.start_all()
    settings = pipeline_settings(pipeline)

    async def produce_garbage() -> None:
        producer = make_producer(settings)
        await producer.start()
        for garbage in GARBAGE:
            await producer.send_and_wait(input_topic("extractor", pipeline.prefix), garbage)
        await producer.stop()

    asyncio.run(produce_garbage())
    job_id = pipeline.submit(english_text(seed=5))

    pipeline.wait_for([job_id])
    letters = asyncio.run(read_dead_letters(settings, "extractor"))
    assert len(letters) == 3
    assert {l.error_type for l in letters} == {"EventDecodeError"}
    assert {l.original() for l in letters} == set(GARBAGE)  # byte for byte
    assert pipeline.processes["extractor-1"].poll() is None

    # Dead letters carry their job's tenant, and an operator lists or replays one tenant's alone.
    acme = pipeline.add_key("acme")
    unusable = pipeline.client.post("/upload", data={"user_id": "u"}, headers={"authorization": f"Bearer {acme}"},
                                    files={"file": ("scan.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                                                    "text/plain")})
    failed_job = unusable.json()["job_id"]
    deadline = time.monotonic() + 60
    while len(asyncio.run(read_dead_letters(settings, "extractor"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.3)
    listed = run_cli(pipeline, "dlq", "list", "extractor", "--tenant", "acme").splitlines()
    assert len(listed) == 1 and f"job={failed_job}" in listed[0] and "replayed" not in listed[0]
    assert run_cli(pipeline, "dlq", "list", "extractor", "--tenant", "default").strip() == ""

    # A replay marks the job's stage running again, so a second replay skips it and the list says so.
    pipeline.stop("extractor-1")
    assert "replayed 1 record(s)" in run_cli(pipeline, "dlq", "replay", "extractor", "--job", failed_job)
    def acme_job() -> dict:
        return pipeline.client.get(f"/jobs/{failed_job}", headers={"authorization": f"Bearer {acme}"}).json()

    assert acme_job()["stages"]["extractor"]["state"] == "running"
    again = run_cli(pipeline, "dlq", "replay", "extractor", "--job", failed_job)
    assert "replayed 0 record(s)" in again and f"skipped 1 already replayed: job(s) {failed_job}" in again
    assert "(replayed: running now)" in run_cli(pipeline, "dlq", "list", "extractor", "--tenant", "acme")
    # It fails again: its newest dead letter is the one listed, once, and it can be replayed again.
    pipeline.start_worker("extractor")
    deadline = time.monotonic() + 60
    while (acme_job()["status"] != "failed" or len(asyncio.run(read_dead_letters(settings, "extractor"))) < 5) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
    listed = run_cli(pipeline, "dlq", "list", "extractor", "--tenant", "acme").splitlines()
    assert len(listed) == 1 and "replayed" not in listed[0]


def test_a_webhook_refused_past_its_schedule_fails_keeps_its_summary_and_can_be_resent(
        broker: str, tmp_path, receiver: WebhookReceiver) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true", "CONVEYOR_WEBHOOK_SECRET": SECRET,
        "CONVEYOR_WEBHOOK_RETRY_SCHEDULE": "0.3,0.3",
    })
    try:
        pipeline.start_all()
        receiver.failing = True
        job_id = pipeline.submit(english_text(seed=6), callback_url=receiver.url)

        pipeline.wait_for([job_id])
        deadline = time.monotonic() + 30
        while (pipeline.job(job_id).get("delivery") or {}).get("state") != "failed" and time.monotonic() < deadline:
            time.sleep(0.2)
        job = pipeline.job(job_id)
        assert job["status"] == "completed" and job["summary"]
        assert job["delivery"]["state"] == "failed"
        assert job["delivery"]["last_status"] == 503
        assert job["delivery"]["attempts"] == 3 == receiver.attempts  # the first POST and two retries
        assert job["notified_at"] is None

        receiver.failing = False
        assert "sent again now" in run_cli(pipeline, "redeliver", job_id)
        deadline = time.monotonic() + 30
        while not pipeline.job(job_id)["notified_at"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert receiver.deliveries == {job_id: 1}
        assert receiver.ids[job_id] == {job_id}
        assert pipeline.job(job_id)["delivery"]["state"] == "delivered"
        assert receiver.bad_signatures == 0
    finally:
        pipeline.stop_all()


def test_two_extractors_share_the_partitions(pipeline: Pipeline) -> None:
    pipeline.start_gateway()
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports, start=1):
        pipeline.start_worker("extractor", index, env={"CONVEYOR_METRICS_PORT": str(port)})
    pipeline.start_worker("summarizer")
    pipeline.start_worker("notifier")
    time.sleep(8)  # both extractors join before work arrives

    jobs = [pipeline.submit(english_text(seed=100 + i, sentences=6)) for i in range(40)]
    pipeline.wait_for(jobs)

    consumed = []
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        line = next(l for l in text.splitlines() if l.startswith('conveyor_events_consumed_total{stage="extractor"}'))
        consumed.append(float(line.split()[-1]))
    assert all(count > 0 for count in consumed), consumed
    assert sum(consumed) >= 40
    # The same port answers the Kubernetes probes.
    assert httpx.get(f"http://127.0.0.1:{ports[0]}/healthz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{ports[0]}/readyz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{ports[0]}/nope").status_code == 404


def test_sigkilled_workers_lose_nothing_and_every_callback_arrives_with_one_stable_id(
        pipeline: Pipeline, receiver: WebhookReceiver) -> None:
    """At least once: every job's webhook arrives, and any repeat carries the same webhook-id."""
    pipeline.start_all()
    total = 500
    jobs = [pipeline.submit(english_text(seed=i, sentences=8), callback_url=receiver.url) for i in range(total)]

    # Kill the summarizer and the notifier while work is in flight, then bring them back.
    deadline = time.monotonic() + 60
    while sum(receiver.deliveries.values()) < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.stop("summarizer-1", signal.SIGKILL)
    pipeline.stop("notifier-1", signal.SIGKILL)
    delivered_before_restart = sum(receiver.deliveries.values())
    pipeline.start_worker("summarizer", 2)
    pipeline.start_worker("notifier", 2)

    done = pipeline.wait_for(jobs, timeout=300)
    deadline = time.monotonic() + 30
    while len(receiver.deliveries) < total and time.monotonic() < deadline:
        time.sleep(0.2)

    assert delivered_before_restart < total
    assert len(done) == total
    assert len(receiver.deliveries) == total
    assert min(receiver.deliveries.values()) >= 1
    assert all(receiver.ids[job] == {job} for job in jobs), "one id per job, on every delivery"
    assert receiver.bad_signatures == 0


def test_sigterm_commits_and_leaves_cleanly(pipeline: Pipeline) -> None:
    pipeline.start_all()
    jobs = [pipeline.submit(english_text(seed=300 + i, sentences=6)) for i in range(30)]
    time.sleep(1)

    assert pipeline.stop("extractor-1", signal.SIGTERM, timeout=30) == 0
    pipeline.start_worker("extractor", 2)

    pipeline.wait_for(jobs)
    lag = run_cli(pipeline, "lag")
    assert "total lag: 0" in lag


def test_a_worker_uses_the_dead_letter_topic_and_group_it_is_bound_to(pipeline: Pipeline) -> None:
    bindings = {"CONVEYOR_DLQ_TOPIC": f"{pipeline.prefix}.team-dead", "CONVEYOR_CONSUMER_GROUP": f"{pipeline.prefix}-team"}
    pipeline.start_gateway()
    pipeline.start_worker("extractor", env=bindings)
    pipeline.start_worker("summarizer")
    pipeline.start_worker("notifier")
    settings = pipeline_settings(pipeline)

    async def produce_garbage() -> None:
        producer = make_producer(settings)
        await producer.start()
        await producer.send_and_wait(input_topic("extractor", pipeline.prefix), GARBAGE[0])
        await producer.stop()

    asyncio.run(produce_garbage())
    pipeline.wait_for([pipeline.submit(english_text(seed=6))])

    bound = settings.model_copy(update={"dlq_topic": bindings["CONVEYOR_DLQ_TOPIC"]})
    assert [letter.original() for letter in asyncio.run(read_dead_letters(bound, "extractor"))] == [GARBAGE[0]]
    assert asyncio.run(read_dead_letters(settings, "extractor", idle_ms=500)) == []  # not the derived DLQ
    topic = [input_topic("extractor", pipeline.prefix)]

    def committed(group: str) -> int:
        return sum(max(0, part.committed) for part in asyncio.run(group_lag(settings, group, topic)))

    deadline = time.monotonic() + 10  # commits follow on the commit interval
    while committed(bindings["CONVEYOR_CONSUMER_GROUP"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert committed(bindings["CONVEYOR_CONSUMER_GROUP"]) == 2  # the garbage and the job
    assert committed(f"{pipeline.prefix}-extractor") == 0  # the derived group never joined


def test_a_jobs_blobs_are_deleted_once_it_completes(broker: str, tmp_path) -> None:
    # Every payload through the blob store: the upload, the submitted text, the extracted text.
    pipeline = Pipeline(broker, tmp_path, extra_env={"CONVEYOR_CLAIM_CHECK_BYTES": "64"})
    try:
        pipeline.start_all()
        jobs = [pipeline.submit(english_text(seed=seed, sentences=6)) for seed in range(5)]
        upload = pipeline.client.post("/upload", data={"user_id": "u"},
                                      files={"file": ("notes.txt", english_text(seed=9).encode(), "text/plain")})
        jobs.append(upload.json()["job_id"])
        pipeline.wait_for(jobs)
        blobs = pipeline.home / "blobs"
        deadline = time.monotonic() + 10
        while any(blobs.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(blobs.iterdir()) == []  # as before the first job
    finally:
        pipeline.stop_all()


def test_a_job_that_fails_in_a_stage_calls_back_with_job_failed_naming_it(pipeline: Pipeline, receiver) -> None:
    pipeline.start_all()
    unusable = pipeline.client.post("/upload", data={"user_id": "u", "callback_url": receiver.url},
                                    files={"file": ("scan.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                                                    "text/plain")}).json()["job_id"]
    good = pipeline.submit(english_text(seed=3), callback_url=receiver.url)
    failed_at = time.time()
    pipeline.wait_for([unusable], states=("failed",))
    pipeline.wait_for([good])
    deadline = time.monotonic() + 10
    while (unusable not in receiver.bodies or good not in receiver.bodies) and time.monotonic() < deadline:
        time.sleep(0.1)
    (notice,) = receiver.bodies[unusable]  # signed: the receiver verified it
    assert notice["type"] == "job.failed" and notice["stage"] == "extractor" and notice["status"] == "failed"
    assert "PermanentError" in notice["error"]
    assert receiver.ids[unusable] == {f"{unusable}.failed"}
    assert receiver.arrivals[unusable] - failed_at < 10
    assert [body["type"] for body in receiver.bodies[good]] == ["job.completed"]
    job = pipeline.job(unusable)
    # Telling the callback changed nothing else: no notifier progress, so a replay that succeeds
    # still completes the job and sends its `job.completed`.
    assert job["status"] == "failed" and job["stages"]["notifier"]["state"] == "pending"

    # Every job that failed since a time is told again, on request, with the same webhook-id.
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failed_at - 60))
    again = pipeline.client.post("/jobs/redeliver", json={"state": "failed", "since": since})
    assert again.status_code == 202 and again.json() == {"scheduled": 1, "next": None}
    deadline = time.monotonic() + 10
    while len(receiver.bodies[unusable]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [body["type"] for body in receiver.bodies[unusable]] == ["job.failed", "job.failed"]
    assert receiver.ids[unusable] == {f"{unusable}.failed"}
    assert len(receiver.bodies[good]) == 1  # completed, not failed: not sent again
    # The same from the command line; a time that is not one is a one-line error.
    assert "webhooks of 1 job(s) that failed since" in run_cli(pipeline, "redeliver", "--failed-since", since)
    wrong = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "redeliver", "--failed-since", "yesterday"],
                           env=pipeline.env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "RFC 3339" in wrong.stderr


def test_a_cancelled_job_stops_its_llm_call_writes_nothing_more_calls_back_and_keeps_no_blob(
        broker: str, tmp_path, openai_server, receiver) -> None:
    from fakes.openai_server import Reply

    openai_server.fallback = lambda received: Reply.slow(20)  # every call takes 20 s
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_CLAIM_CHECK_BYTES": "64",  # the text and the extracted document travel as blobs
        "CONVEYOR_SUMMARIZER_BACKEND": "openai", "CONVEYOR_OPENAI_BASE_URL": openai_server.url,
        "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true", "CONVEYOR_WEBHOOK_SECRET": SECRET})
    try:
        pipeline.start_all()
        job_id = pipeline.submit(english_text(seed=4), callback_url=receiver.url)
        deadline = time.monotonic() + 60
        while not openai_server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert openai_server.in_flight, "the LLM call never started"

        cancelled_at = time.monotonic()
        answer = pipeline.client.delete(f"/jobs/{job_id}")
        again = pipeline.client.delete(f"/jobs/{job_id}")  # the same answer: cancelling is idempotent
        assert answer.status_code == again.status_code == 202 and answer.json()["status"] == "cancelled"
        deadline = time.monotonic() + 5
        while not openai_server.disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
        assert openai_server.disconnects and openai_server.disconnects[0] - cancelled_at < 2  # the call was cut
        deadline = time.monotonic() + 10
        while job_id not in receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [body["type"] for body in receiver.bodies[job_id]] == ["job.cancelled"]
        assert receiver.ids[job_id] == {f"{job_id}.cancelled"}
        time.sleep(2)
        job = pipeline.job(job_id)
        assert job["status"] == "cancelled" and job["summary"] is None  # nothing was written after it
        assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
        assert pipeline.client.delete("/jobs/nope").status_code == 404
    finally:
        pipeline.stop_all()

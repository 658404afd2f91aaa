"""A broker that dies under the gateway: 503 with Retry-After within 2 s, nothing written for what
was refused, and jobs accepted again once it is back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from conveyor.cli.embedded_broker import EmbeddedBroker
from conveyor.credentials import add_key
from conveyor.kafka.admin import ensure_topics
from conveyor.topics import all_topics
from inprocess_gateway import gateway, settings_for, submit


def job_rows(home: Path) -> int:
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


async def test_a_dead_broker_is_503_within_2_s_with_nothing_written_and_work_resumes_when_it_is_back(
        tmp_path: Path) -> None:
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    broker = EmbeddedBroker().start()
    try:
        settings = settings_for(broker.bootstrap, tmp_path)
        async with gateway(settings) as client:
            assert (await submit(client, key)).status_code == 202
            broker.stop()

            started = time.monotonic()
            first = await submit(client, key)
            first_took = time.monotonic() - started
            started = time.monotonic()
            second = await submit(client, key)
            second_took = time.monotonic() - started
            assert (first.status_code, second.status_code) == (503, 503)
            assert first_took < 2.5 and second_took < 0.5  # the second is refused without trying
            assert int(first.headers["retry-after"]) >= 1 and "kafka" in first.json()["detail"]
            assert job_rows(tmp_path) == 1  # the refused requests left no record

            broker.start()  # the same address, empty
            await ensure_topics(settings, all_topics(settings.topic_prefix))
            deadline = time.monotonic() + 20
            answer = await submit(client, key)
            while answer.status_code == 503 and time.monotonic() < deadline:
                time.sleep(float(answer.headers["retry-after"]) / 4)
                answer = await submit(client, key)
            assert answer.status_code == 202
            assert job_rows(tmp_path) == 2
    finally:
        broker.stop()

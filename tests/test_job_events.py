"""`GET /jobs/{id}/events` and `conveyor status --follow`: a job's progress pushed until it ends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.credentials import add_key
from conveyor.events import utcnow
from conveyor.gateway.job_events import StreamSlots, TooManyStreams, changes
from conveyor.stores.base import JobRecord, JobState, StageProgress, StageState
from documents import english_text
from inprocess_gateway import bearer, gateway, settings_for, submit
from test_pipeline_files import _client, _stop, _up


def parse(stream: str) -> list[tuple[str, dict]]:
    """(event, data) of each event of a text/event-stream body; comments skipped."""
    found = []
    for block in stream.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def test_changes_name_each_stage_that_moved_and_the_job_once() -> None:
    now = utcnow()
    before = JobRecord(job_id="j", user_id="u", state=JobState.queued,
                       stages={"extractor": StageProgress(), "summarizer": StageProgress()})
    after = before.model_copy(update={"state": JobState.running, "updated_at": now + timedelta(seconds=1), "stages": {
        "extractor": StageProgress(state=StageState.done, attempts=1, updated_at=now),
        "summarizer": StageProgress(),
    }})
    events = changes(before, after)
    assert [(name, data.get("stage", data.get("status"))) for name, data in events] == \
        [("stage", "extractor"), ("job", "running")]
    assert events[0][1]["state"] == "done" and events[0][1]["attempts"] == 1
    assert changes(after, after) == []


def test_stream_slots_bound_each_tenant_alone() -> None:
    slots = StreamSlots(per_tenant=2)
    first, second = slots.acquire("acme"), slots.acquire("acme")
    with pytest.raises(TooManyStreams, match="acme has 2 event streams open"):
        slots.acquire("acme")
    other = slots.acquire("globex")  # another tenant is not held back
    first()
    first()  # releasing twice gives back one slot only
    third = slots.acquire("acme")
    assert slots.open("acme") == 2
    for release in (second, third, other):
        release()
    assert slots.open("acme") == slots.open("globex") == 0


async def test_a_tenants_streams_are_bounded_and_a_closed_one_frees_its_slot(broker: str, tmp_path: Path) -> None:
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    settings = settings_for(broker, tmp_path, tenant_max_event_streams=1, event_stream_poll_seconds=0.05)
    async with gateway(settings) as client:  # no workers: the job stays queued and its stream open
        job = (await submit(client, key)).json()["job_id"]
        held = asyncio.create_task(client.get(f"/jobs/{job}/events", headers=bearer(key)))
        await asyncio.sleep(0.3)
        refused = await client.get(f"/jobs/{job}/events", headers=bearer(key))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        assert "acme has 1 event streams open" in refused.json()["detail"]
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        again = asyncio.create_task(client.get(f"/jobs/{job}/events", headers=bearer(key)))
        done, _ = await asyncio.wait({again}, timeout=0.5)
        assert not done, "the slot of the closed stream was given back: this one stays open"
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)
        assert (await client.get("/jobs/nope/events", headers=bearer(key))).status_code == 404
        assert (await client.get(f"/jobs/{job}/events")).status_code == 401


@pytest.mark.slow
def test_the_stream_shows_each_stage_in_order_and_closes_when_the_job_ends(tmp_path: Path) -> None:
    up, url, home = _up(tmp_path, env={"CONVEYOR_EVENT_STREAM_POLL_SECONDS": "0.05"})
    try:
        with _client(url, home) as client:
            job = client.post("/submit", json={"user_id": "u", "content": english_text(seed=3, sentences=8)}).json()["job_id"]
            with client.stream("GET", f"/jobs/{job}/events", timeout=60) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                body = "".join(response.iter_text())
            follow = subprocess.run([sys.executable, "-m", "conveyor.cli.main", "status", "--follow", job, "--url", url],
                                    env={**os.environ, "CONVEYOR_HOME": str(home)}, capture_output=True, text=True,
                                    timeout=60)
    finally:
        _stop(up)
    events = parse(body)
    assert events[0][0] == "status" and events[-1][0] == "end"
    assert events[-1][1]["status"] == "completed" and events[-1][1]["summary"]
    done = [data["stage"] for name, data in events if name == "stage" and data["state"] == "done"]
    assert done == ["extractor", "summarizer", "notifier"]
    assert [data["status"] for name, data in events if name == "job"][-1] == "completed"
    # The job had ended: --follow prints where it stands and its summary, and exits 0.
    assert follow.returncode == 0, follow.stderr
    assert "completed" in follow.stderr and follow.stdout.strip() == events[-1][1]["summary"]

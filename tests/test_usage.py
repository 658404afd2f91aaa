"""Usage per tenant: model calls counted where they are made, summed per tenant and day, shown per
job and at GET /usage; a daily token budget answers 429 once spent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from conveyor import usage
from documents import english_text
from fakes.openai_server import FakeOpenAI, Reply
from pipeline_harness import Pipeline


async def test_charges_inside_the_block_and_its_tasks_count_and_outside_nothing() -> None:
    usage.charge(100)  # no handler run: counted nowhere
    with usage.counting() as tally:
        task = asyncio.ensure_future(asyncio.sleep(0, result=None))
        usage.charge(10)

        async def part() -> None:
            usage.charge(5, calls=2)

        await asyncio.gather(part(), part())
        await task
    usage.charge(7)
    assert (tally.tokens, tally.calls) == (20, 5)


def test_days_are_utc_and_end_at_midnight() -> None:
    late = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)
    assert usage.day_of(late) == "2026-12-03"
    assert usage.next_day(late) == datetime(2026, 12, 4, tzinfo=UTC)


@pytest.mark.slow
def test_usage_is_the_sum_over_the_jobs_and_a_spent_budget_answers_429(broker: str, tmp_path,
                                                                      openai_server: FakeOpenAI) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_SUMMARIZER_BACKEND": "openai", "CONVEYOR_OPENAI_BASE_URL": openai_server.url,
        "CONVEYOR_TENANT_DAILY_TOKENS": "acme=150,*=1000000", "CONVEYOR_TENANT_REQUESTS_PER_SECOND": "10000",
    })
    acme = pipeline.add_key("acme")
    pipeline.start_all()
    openai_server.script(Reply.error(500))  # a failed call: it costs nothing
    try:
        jobs = [pipeline.submit(english_text(seed=800 + i, sentences=6)) for i in range(4)]
        done = pipeline.wait_for(jobs, timeout=120)
        views = {job: pipeline.job(job) for job in done}
        answered = list(openai_server.usages)
        total = pipeline.client.get("/usage").json()

        # Every job's tokens are what the server reported for its calls; the tenant's day is their sum.
        assert all(view["usage"]["calls"] >= 1 and view["usage"]["tokens"] > 0 for view in views.values())
        assert total["tokens"] == sum(v["usage"]["tokens"] for v in views.values()) == \
            sum(u["total_tokens"] for u in answered)
        assert total["calls"] == sum(v["usage"]["calls"] for v in views.values()) == len(answered)
        assert (total["jobs"], total["daily_token_budget"], total["remaining"]) == (4, 1_000_000, 1_000_000 - total["tokens"])

        # acme's budget of 150 tokens: its first job spends it, its next submission is refused.
        headers = {"authorization": f"Bearer {acme}"}
        first = httpx.post(f"{pipeline.url}/submit", json={"user_id": "u", "content": english_text(seed=900, sentences=8)},
                           headers=headers, timeout=30).json()["job_id"]
        for _ in range(120):  # acme's job, with acme's key
            if httpx.get(f"{pipeline.url}/jobs/{first}", headers=headers, timeout=30).json()["status"] == "completed":
                break
            time.sleep(0.5)
        refused = None
        for _ in range(20):  # the gateway reads the spend at most every 2 s
            refused = httpx.post(f"{pipeline.url}/submit", json={"user_id": "u", "content": "More text. Again."},
                                 headers=headers, timeout=30)
            if refused.status_code == 429:
                break
            time.sleep(0.5)
        spent = httpx.get(f"{pipeline.url}/usage", headers=headers, timeout=30).json()
    finally:
        pipeline.stop_all()
    assert refused is not None and refused.status_code == 429, refused.text if refused else None
    assert "acme has spent its daily budget of 150 tokens" in refused.json()["detail"]
    seconds = int(refused.headers["retry-after"])
    assert 0 < seconds <= 86_400
    assert spent["tenant"] == "acme" and spent["tokens"] >= 150 and spent["remaining"] == 0
    assert spent["resets_at"].startswith(usage.next_day(datetime.now(UTC)).date().isoformat())

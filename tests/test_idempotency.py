"""`Idempotency-Key`: a retried submission is the same job, in process on the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor.credentials import add_key
from conveyor.stores import open_job_store
from inprocess_gateway import TEXT, bearer, gateway, settings_for, submit


async def test_twenty_concurrent_submissions_with_one_key_are_one_job(broker: str, tmp_path: Path) -> None:
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    settings = settings_for(broker, tmp_path)
    async with gateway(settings) as client:
        headers = {**bearer(key), "idempotency-key": "order-42"}
        answers = await asyncio.gather(*[
            client.post("/submit", json={"user_id": "u1", "content": TEXT}, headers=headers) for _ in range(20)])
        later = await client.post("/submit", json={"user_id": "u1", "content": TEXT}, headers=headers)
        other_body = await client.post("/submit", json={"user_id": "u1", "content": TEXT + " More."}, headers=headers)
        fresh = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                  headers={**bearer(key), "idempotency-key": "order-43"})
        without = [await submit(client, key) for _ in range(2)]
    assert [a.status_code for a in answers] == [202] * 20
    (job_id,) = {a.json()["job_id"] for a in answers}
    assert later.status_code == 202 and later.json()["job_id"] == job_id
    assert other_body.status_code == 422 and "different request body" in other_body.json()["detail"]
    assert fresh.json()["job_id"] != job_id
    assert without[0].json()["job_id"] != without[1].json()["job_id"]  # no key, no deduplication
    store = open_job_store(settings)
    assert await store.active_jobs("acme") == 4  # one job per distinct request, not 24
    await store.close()


async def test_keys_are_per_tenant_and_bounded(broker: str, tmp_path: Path) -> None:
    acme, _ = add_key(tmp_path / "api-keys.json", "acme")
    globex, _ = add_key(tmp_path / "api-keys.json", "globex")
    async with gateway(settings_for(broker, tmp_path)) as client:
        first = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                  headers={**bearer(acme), "idempotency-key": "k"})
        theirs = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                   headers={**bearer(globex), "idempotency-key": "k"})
        too_long = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                     headers={**bearer(acme), "idempotency-key": "k" * 256})
    assert first.status_code == theirs.status_code == 202
    assert first.json()["job_id"] != theirs.json()["job_id"]  # another tenant's key is another key
    assert too_long.status_code == 422


async def test_a_repeat_of_an_upload_is_the_first_job_and_keeps_no_second_blob(broker: str, tmp_path: Path) -> None:
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    async with gateway(settings_for(broker, tmp_path, claim_check_bytes=10)) as client:
        headers = {**bearer(key), "idempotency-key": "upload-1"}
        answers = [await client.post("/upload", data={"user_id": "u1"}, headers=headers,
                                     files={"file": ("a.txt", TEXT.encode(), "text/plain")}) for _ in range(3)]
    assert {a.status_code for a in answers} == {202} and len({a.json()["job_id"] for a in answers}) == 1
    assert len(list((tmp_path / "blobs").iterdir())) == 1


async def test_a_key_whose_first_request_failed_can_be_used_again(broker: str, tmp_path: Path) -> None:
    """The first request is refused (its tenant is at its quota): the key is not taken by it."""
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    settings = settings_for(broker, tmp_path, tenant_max_active_jobs=1)
    async with gateway(settings) as client:
        filler = await submit(client, key)
        refused = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                    headers={**bearer(key), "idempotency-key": "retry-me"})
        store = open_job_store(settings)
        await store.complete(filler.json()["job_id"], summary="done")
        await store.close()
        await asyncio.sleep(1.1)  # the quota's count is re-read once a second
        retried = await client.post("/submit", json={"user_id": "u1", "content": TEXT},
                                    headers={**bearer(key), "idempotency-key": "retry-me"})
    assert refused.status_code == 429
    assert retried.status_code == 202 and retried.json()["job_id"] != filler.json()["job_id"]

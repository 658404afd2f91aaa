"""Documents with identity, end to end: the gateway, extractor, embedder (OpenAI-compatible
embeddings into the embedded Qdrant), summarizer (an LLM) and notifier, on the real broker.

A new version of a document replaces its vectors and its summary; a version with the last
completed one's content completes at once with no model call; an erasure leaves no vector, blob
or job record of the document, counted in each store.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conveyor.events import Event, Payload, record_key
from documents import english_text
from fakes.openai_server import FakeOpenAI, Reply
from pipeline_harness import Pipeline

STAGES = "extractor,embedder,summarizer,notifier"
COLLECTION = "conveyor_chunks"


def test_a_versions_records_are_keyed_by_its_document_and_keep_that_key_when_sent_again() -> None:
    """Re-drives and dead-letter replays send a version with its document's key, so it still
    meets the other versions in order; bytes that are no event keep the job id."""
    version = Event(job_id="j1", tenant="acme", user_id="u", stage="extractor", payload=Payload(text="x"),
                    document_id="handbook/intro")
    plain = version.model_copy(update={"document_id": None})
    assert version.partition_key() == b"acme/handbook/intro" and plain.partition_key() == b"j1"
    assert record_key(version.to_bytes(), "j1") == b"acme/handbook/intro"
    assert record_key(b"not an event", "j1") == b"j1" and record_key(b"not an event", None) is None


def _paragraphs(seed: int) -> list[str]:
    return [english_text(seed=seed + i, sentences=6) for i in range(8)]


def _submit(pipeline: Pipeline, paragraphs: list[str], **extra: object) -> dict:
    answer = pipeline.client.post("/submit", json={"user_id": "u1", "content": "\n\n".join(paragraphs),
                                                   "document_id": "handbook/intro", **extra})
    assert answer.status_code == 202, answer.text
    return answer.json()


def _model_calls(server: FakeOpenAI) -> tuple[int, int]:
    """(chat completions, embeddings requests) the fake server received."""
    bodies = [received.body for received in list(server.requests)]
    return sum("messages" in body for body in bodies), sum("input" in body for body in bodies)


def _stored_chunks(home: Path) -> list[dict]:
    """Every point in the embedded Qdrant (the embedder, which holds its folder, is stopped)."""
    from qdrant_client import QdrantClient

    store = QdrantClient(path=str(home / "qdrant"))
    try:
        if not store.collection_exists(COLLECTION):
            return []
        points, _ = store.scroll(COLLECTION, limit=10_000, with_payload=True)
        return [point.payload or {} for point in points]
    finally:
        store.close()


def _records_naming(home: Path, document_id: str) -> int:
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        return db.execute("SELECT count(*) FROM jobs WHERE json_extract(record, '$.document_id') = ?",
                          (document_id,)).fetchone()[0]


def _blobs(home: Path) -> list[Path]:
    return [path for path in (home / "blobs").rglob("*") if path.is_file()]


@pytest.mark.slow
def test_versions_replace_vectors_unchanged_content_costs_nothing_and_erasure_leaves_nothing(
        broker: str, tmp_path: Path, openai_server: FakeOpenAI) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={
        "CONVEYOR_PIPELINE_STAGES": STAGES,
        "CONVEYOR_SUMMARIZER_BACKEND": "openai", "CONVEYOR_OPENAI_BASE_URL": openai_server.url,
        "CONVEYOR_EMBEDDER_BACKEND": "openai", "CONVEYOR_EMBEDDINGS_BASE_URL": openai_server.url,
        "CONVEYOR_EMBED_CHUNK_CHARS": "1200",
        # Every version through the blob store: the erasure must find and delete its blobs.
        "CONVEYOR_CLAIM_CHECK_BYTES": "1024",
    })
    pipeline.start_gateway()
    for stage in STAGES.split(","):
        pipeline.start_worker(stage)
    try:
        first = _paragraphs(seed=10)
        one = _submit(pipeline, first)["job_id"]
        pipeline.wait_for([one], timeout=120)

        # One paragraph changed: the document's vectors are the new version's chunks, no more.
        changed = [*first[:3], english_text(seed=999, sentences=6), *first[4:]]
        two = _submit(pipeline, changed)["job_id"]
        second = pipeline.wait_for([two], timeout=120)[two]
        pipeline.stop("embedder-1")
        chunks = _stored_chunks(tmp_path)
        pipeline.start_worker("embedder")
        assert len(chunks) == second["meta"]["embedded_chunks"] > 1
        assert {chunk["job_id"] for chunk in chunks} == {two}
        stored_text = " ".join(chunk["text"] for chunk in chunks)
        assert changed[3][:60] in stored_text and first[3][:60] not in stored_text

        document = pipeline.client.get("/documents/handbook/intro").json()
        assert (document["versions"], document["current_job_id"], document["summary"]) == \
            (2, two, second["summary"])

        # The same content again: completed in the answer itself, with no model call.
        calls = _model_calls(openai_server)
        answer = _submit(pipeline, changed)
        assert answer["status"] == "completed"
        three = pipeline.job(answer["job_id"])
        assert (three["status"], three["unchanged_from"], three["summary"]) == ("completed", two, second["summary"])
        time.sleep(2)  # anything it had set going would have called by now
        assert _model_calls(openai_server) == calls

        listed = pipeline.client.get("/jobs", params={"document": "handbook/intro"}).json()["jobs"]
        assert [job["job_id"] for job in listed] == [answer["job_id"], two, one]
        assert _blobs(tmp_path) == []  # completed versions keep none; the unchanged one never had one

        # A fourth version still running when the document is erased: cancelled, and nothing of it stays.
        # Its embeddings call takes 20 s: the erasure cancels it, and the call is cut within 2 s.
        openai_server.fallback = lambda received: Reply.slow(20)
        four = _submit(pipeline, _paragraphs(seed=40))["job_id"]
        deadline = time.monotonic() + 60
        while openai_server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipeline.job(four)["stages"]["embedder"]["state"] == "running"
        erasing = time.monotonic()
        erased = pipeline.client.delete("/documents/handbook/intro")
        assert erased.status_code == 202, erased.text
        erasure = erased.json()
        assert erasure["versions"] == 4
        done = pipeline.wait_for([erasure["job_id"]], timeout=120)[erasure["job_id"]]
        assert (done["erases"], done["meta"]["versions_erased"]) == ("handbook/intro", 4)

        assert pipeline.client.get("/documents/handbook/intro").status_code == 404
        assert pipeline.client.get("/jobs", params={"document": "handbook/intro"}).json()["jobs"] == []
        for job in (one, two, answer["job_id"], four):
            assert pipeline.client.get(f"/jobs/{job}").status_code == 404
        pipeline.stop("embedder-1")
        assert _stored_chunks(tmp_path) == []
        assert _records_naming(tmp_path, "handbook/intro") == 0
        assert _blobs(tmp_path) == []
        assert openai_server.disconnects and openai_server.disconnects[0] - erasing < 2.0, \
            "the embeddings call of the erased version was not cut within 2 s"
    finally:
        openai_server.fallback = None
        pipeline.stop_all()


def _conveyor(pipeline: Pipeline, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args, "--url", pipeline.url], input=stdin,
                          env=pipeline.env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_another_tenant_can_neither_see_nor_erase_a_document_and_the_cli_erases_one(broker: str,
                                                                                    tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path)
    other = {"authorization": f"Bearer {pipeline.add_key('globex')}"}
    pipeline.start_all()
    try:
        text = english_text(seed=5, sentences=6)
        first = _conveyor(pipeline, "submit", "-", "--document", "handbook/intro", "--wait", stdin=text)
        assert first.returncode == 0, first.stderr
        for method in ("GET", "DELETE"):
            answer = httpx.request(method, f"{pipeline.url}/documents/handbook/intro", headers=other, timeout=30)
            assert answer.status_code == 404, answer.text
        assert httpx.get(f"{pipeline.url}/jobs", params={"document": "handbook/intro"}, headers=other,
                         timeout=30).json()["jobs"] == []

        again = _conveyor(pipeline, "submit", "-", "--document", "handbook/intro", "--wait", stdin=text)
        assert again.returncode == 0 and again.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]
        assert pipeline.job(again.stdout.split()[0])["unchanged_from"] == first.stdout.split()[0]
        assert pipeline.client.get("/documents/handbook/intro").json()["versions"] == 2

        # Uploaded: the same file twice is one version that ran and one unchanged (whose blob is gone).
        upload = tmp_path / "manual.html"
        upload.write_text(f"<html><body><h1>Manual</h1><p>{text}</p></body></html>")
        ran, repeated = (_conveyor(pipeline, "submit", str(upload), "--document", "manual", "--wait") for _ in range(2))
        assert ran.returncode == repeated.returncode == 0, (ran.stderr, repeated.stderr)
        assert pipeline.job(repeated.stdout.split()[0])["unchanged_from"] == ran.stdout.split()[0]
        assert [path for path in (tmp_path / "blobs").rglob("*") if path.is_file()] == []

        erased = _conveyor(pipeline, "erase", "handbook/intro", "--wait")
        assert erased.returncode == 0, erased.stderr
        assert erased.stdout.splitlines()[-1] == "document handbook/intro erased"
        assert pipeline.client.get("/documents/handbook/intro").status_code == 404
        for method in ("GET", "DELETE"):  # an id no submission could have: no document, never a 5xx
            assert pipeline.client.request(method, "/documents/%40%16").status_code == 404
        missing = _conveyor(pipeline, "erase", "handbook/intro")
        assert (missing.returncode, missing.stderr.strip()) == (1, "conveyor: no document handbook/intro")
    finally:
        pipeline.stop_all()

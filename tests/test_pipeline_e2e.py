"""End to end through real processes: gateway -> extractor -> summarizer -> notifier on a real broker."""

from __future__ import annotations

import io
import re

import httpx
import pytest

from documents import english_text, pdf_bytes
from pipeline_harness import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(broker: str, tmp_path_factory: pytest.TempPathFactory):
    running = Pipeline(broker, tmp_path_factory.mktemp("pipeline")).start_all()
    yield running
    running.stop_all()


def sentences_of(text: str) -> set[str]:
    return {s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()}


def test_json_submit_completes_with_sentences_from_the_input(pipeline: Pipeline) -> None:
    text = english_text(seed=1)
    job_id = pipeline.submit(text)

    job = pipeline.wait_for([job_id])[job_id]

    assert job["status"] == "completed"
    assert set(job["stages"]) == {"extractor", "summarizer", "notifier"}
    assert all(stage["state"] == "done" for stage in job["stages"].values())
    summary = sentences_of(job["summary"])
    assert len(summary) == 3
    assert summary <= sentences_of(text)


def test_status_url_points_at_the_job(pipeline: Pipeline) -> None:
    response = httpx.post(f"{pipeline.url}/submit", json={"user_id": "u2", "content": english_text(seed=2)})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert httpx.get(body["status_url"]).json()["job_id"] == body["job_id"]


@pytest.mark.parametrize("kind", ["pdf", "html", "cp1251-text"])
def test_uploaded_documents_complete(pipeline: Pipeline, kind: str) -> None:
    text = english_text(seed=3, sentences=12)
    if kind == "pdf":
        files = {"file": ("report.pdf", pdf_bytes(text), "application/pdf")}
    elif kind == "html":
        page = (f"<html><head><title>Report</title></head><body><nav>Home | About | Login</nav>"
                f"<article><h1>Report</h1><p>{text}</p></article><footer>Cookie settings</footer></body></html>")
        files = {"file": ("report.html", page.encode(), "text/html")}
    else:
        text = "Реки региона изменились за десятилетия. Учёные измеряли воду каждый год. " * 3
        files = {"file": ("notes.txt", text.encode("cp1251"), "text/plain")}
    response = httpx.post(f"{pipeline.url}/upload", data={"user_id": "u3"}, files=files, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    job = pipeline.wait_for([job_id])[job_id]

    assert job["summary"]
    assert sentences_of(job["summary"]) <= sentences_of(text) | {s + "." for s in sentences_of(text)}


def test_unusable_document_fails_with_a_clear_error(pipeline: Pipeline) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    response = httpx.post(f"{pipeline.url}/upload", data={"user_id": "u4"},
                          files={"file": ("scan.txt", png, "text/plain")})
    assert response.status_code == 202
    job_id = response.json()["job_id"]

    job = pipeline.wait_for([job_id], states=("failed",))[job_id]

    assert job["stages"]["extractor"]["state"] == "failed"
    assert "PermanentError" in job["error"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
        ({"json": {"content": "text without a user"}}, 422, "user_id"),
        ({"json": {"user_id": "u", "content": ""}}, 422, "content"),
        ({"json": {"user_id": "u", "content": "x", "surprise": 1}}, 422, "surprise"),
        ({"json": {"user_id": "u", "content": "x", "callback_url": "not a url"}}, 422, "callback_url"),
    ],
)
def test_bad_json_gets_a_clear_4xx(pipeline: Pipeline, request_kwargs: dict, status: int, message: str) -> None:
    response = httpx.post(f"{pipeline.url}/submit", **request_kwargs)
    assert response.status_code == status
    assert message in response.text


def test_oversized_json_body_is_413(pipeline: Pipeline) -> None:
    huge = "a" * (5 * 1024 * 1024 + 10)
    response = httpx.post(f"{pipeline.url}/submit", json={"user_id": "u", "content": huge})
    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]
    assert 'conveyor_http_requests_total{method="POST",route="unmatched",status="413"}' in \
        httpx.get(f"{pipeline.url}/metrics").text


def test_unsupported_upload_type_is_415(pipeline: Pipeline) -> None:
    response = httpx.post(f"{pipeline.url}/upload", data={"user_id": "u"},
                          files={"file": ("photo.png", b"\x89PNG....", "image/png")})
    assert response.status_code == 415
    assert "unsupported file type" in response.json()["detail"]


def test_upload_without_file_is_422(pipeline: Pipeline) -> None:
    response = httpx.post(f"{pipeline.url}/upload", data={"user_id": "u"})
    assert response.status_code == 422


def test_redeliver_answers_4xx_for_what_it_cannot_resend(pipeline: Pipeline) -> None:
    assert httpx.post(f"{pipeline.url}/jobs/nope/redeliver").status_code == 404
    job_id = pipeline.submit(english_text(seed=2))
    pipeline.wait_for([job_id])
    answer = httpx.post(f"{pipeline.url}/jobs/{job_id}/redeliver")
    assert answer.status_code == 409 and "no callback_url" in answer.json()["detail"]


def test_unknown_job_is_404(pipeline: Pipeline) -> None:
    assert httpx.get(f"{pipeline.url}/jobs/nope").status_code == 404


def test_probes_and_docs(pipeline: Pipeline) -> None:
    assert httpx.get(f"{pipeline.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{pipeline.url}/readyz").status_code == 200
    assert "/submit" in httpx.get(f"{pipeline.url}/openapi.json").json()["paths"]
    assert "conveyor_http_requests_total" in httpx.get(f"{pipeline.url}/metrics").text

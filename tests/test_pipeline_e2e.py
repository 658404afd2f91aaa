"""End to end through real processes: gateway -> extractor -> summarizer -> notifier on a real broker."""

from __future__ import annotations

import re
import time

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
    response = pipeline.client.post("/submit", json={"user_id": "u2", "content": english_text(seed=2)})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert pipeline.client.get(body["status_url"]).json()["job_id"] == body["job_id"]


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
        text = "Реки этого региона сильно изменились за последние десятилетия. Учёные внимательно измеряли уровень воды каждый год. " * 3
        files = {"file": ("notes.txt", text.encode("cp1251"), "text/plain")}
    response = pipeline.client.post("/upload", data={"user_id": "u3"}, files=files, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    job = pipeline.wait_for([job_id])[job_id]

    assert job["summary"]
    assert sentences_of(job["summary"]) <= sentences_of(text) | {s + "." for s in sentences_of(text)}


def test_unusable_document_fails_with_a_clear_error(pipeline: Pipeline) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    response = pipeline.client.post("/upload", data={"user_id": "u4"},
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
        ({"content": b"", "headers": {"content-type": "application/json"}}, 422, "Field required"),
        ({"content": b'{"user_id": "u", "content": "x"}', "headers": {"content-type": "text/plain"}}, 422,
         "must be JSON"),
        ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 422, '"loc": ["body"]'),
        ({"json": {"user_id": "u", "content": "x"}, "headers": {"idempotency-key": "has spaces"}}, 422,
         "Idempotency-Key"),
        ({"json": {"content": "text without a user"}}, 422, "user_id"),
        ({"json": {"user_id": "u", "content": ""}}, 422, "content"),
        ({"json": {"user_id": "u", "content": "x", "surprise": 1}}, 422, "surprise"),
        ({"json": {"user_id": "u", "content": "x", "callback_url": "not a url"}}, 422, "callback_url"),
        ({"json": {"user_id": "u", "content": "x", "content_type": "text/plain\nFORGED log line"}}, 422, "content_type"),
        ({"json": {"user_id": "u", "content": "x", "content_type": "text/" + "p" * 2_000_000}}, 422, "content_type"),
    ],
)
def test_bad_json_gets_a_clear_4xx(pipeline: Pipeline, request_kwargs: dict, status: int, message: str) -> None:
    response = pipeline.client.post("/submit", **request_kwargs)
    assert response.status_code == status
    assert message in response.text


def test_oversized_json_body_is_413(pipeline: Pipeline) -> None:
    huge = "a" * (5 * 1024 * 1024 + 10)
    response = pipeline.client.post("/submit", json={"user_id": "u", "content": huge})
    assert response.status_code == 413
    assert "exceeds" in response.json()["detail"]
    # /submit is matched before its body is read, so even its 413 carries the route.
    assert 'conveyor_http_requests_total{method="POST",route="/submit",status="413"}' in \
        httpx.get(f"{pipeline.operations_url}/metrics").text


def test_unsupported_upload_type_is_415(pipeline: Pipeline) -> None:
    response = pipeline.client.post("/upload", data={"user_id": "u"},
                          files={"file": ("photo.png", b"\x89PNG....", "image/png")})
    assert response.status_code == 415
    assert "unsupported file type" in response.json()["detail"]


def test_oversized_chunked_body_is_413(pipeline: Pipeline) -> None:
    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    response = pipeline.client.post("/submit", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(("name", "content_type", "status"), [
    ("backup.zip", "", 415),  # an archive without its MIME type
    ("backup.zip", "application/octet-stream", 415),
    ("report.txt", "text/plain; " + "x" * 300, 422),  # a content type past its length limit
    ("r" * 300 + ".txt", "text/plain", 422),
])
def test_uploads_that_cannot_be_documents_get_a_4xx(pipeline: Pipeline, name: str, content_type: str,
                                                    status: int) -> None:
    response = pipeline.client.post("/upload", data={"user_id": "u"},
                          files={"file": (name, b"PK\x03\x04 not a document", content_type)})
    assert response.status_code == status, response.text


def test_upload_with_an_invalid_callback_url_is_422(pipeline: Pipeline) -> None:
    response = pipeline.client.post("/upload", data={"user_id": "u", "callback_url": "not a url"},
                          files={"file": ("a.txt", b"Some text.", "text/plain")})
    assert response.status_code == 422 and "callback_url" in response.text


def test_a_text_without_sentence_ends_fails_as_having_no_prose(pipeline: Pipeline) -> None:
    job_id = pipeline.submit(" ".join(["word"] * 20_000))  # 100 KB, one endless "sentence"
    job = pipeline.wait_for([job_id], states=("failed",))[job_id]
    assert job["stages"]["summarizer"]["state"] == "failed"
    assert "no prose to summarize" in job["error"] and not job.get("summary")


def test_credentials_in_a_callback_url_are_never_shown(pipeline: Pipeline) -> None:
    """The pipeline's callbacks to 127.0.0.1 are refused (a private address): the delivery fails,
    and neither its error nor anything else in the job's status carries the URL's credentials."""
    job_id = pipeline.submit(english_text(seed=3), callback_url="http://alice:hunter2@127.0.0.1:9/h?token=s3cr3t")
    pipeline.wait_for([job_id])
    deadline = time.monotonic() + 30
    while (pipeline.job(job_id).get("delivery") or {}).get("state") != "failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = pipeline.client.get(f"/jobs/{job_id}").text
    assert '"state":"failed"' in shown
    assert "hunter2" not in shown and "s3cr3t" not in shown and "alice" not in shown


def test_upload_without_file_is_422(pipeline: Pipeline) -> None:
    response = pipeline.client.post("/upload", data={"user_id": "u"})
    assert response.status_code == 422


def test_redeliver_answers_4xx_for_what_it_cannot_resend(pipeline: Pipeline) -> None:
    assert pipeline.client.post("/jobs/nope/redeliver").status_code == 404
    job_id = pipeline.submit(english_text(seed=2))
    pipeline.wait_for([job_id])
    answer = pipeline.client.post(f"/jobs/{job_id}/redeliver")
    assert answer.status_code == 409 and "no callback_url" in answer.json()["detail"]


def test_a_submission_answers_where_to_follow_it_and_is_measured_under_its_route(pipeline: Pipeline) -> None:
    answer = pipeline.client.post("/submit", json={"user_id": "u", "content": "Rivers rise. Rivers fall."})
    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "queued" and body["status_url"] == f"{pipeline.url}/jobs/{body['job_id']}"
    assert pipeline.client.get(f"/jobs/{body['job_id']}").status_code == 200
    assert 'conveyor_http_requests_total{method="POST",route="/submit",status="202"}' in \
        httpx.get(f"{pipeline.operations_url}/metrics").text


def test_unknown_job_is_404(pipeline: Pipeline) -> None:
    assert pipeline.client.get("/jobs/nope").status_code == 404


def test_probes_on_the_public_port_docs_and_metrics_off_it(pipeline: Pipeline) -> None:
    assert httpx.get(f"{pipeline.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{pipeline.url}/readyz").status_code == 200
    # Docs and metrics are on the operations port only.
    assert "/submit" in httpx.get(f"{pipeline.operations_url}/openapi.json").json()["paths"]
    assert "swagger-ui" in httpx.get(f"{pipeline.operations_url}/docs").text
    assert "conveyor_http_requests_total" in httpx.get(f"{pipeline.operations_url}/metrics").text
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(f"{pipeline.url}{path}", headers=pipeline.headers).status_code == 404

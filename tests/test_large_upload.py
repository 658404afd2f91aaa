"""A 25 MB upload goes through the claim check, completes, and the gateway's memory stays bounded."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from documents import large_pdf_bytes
from pipeline_harness import Pipeline

pytestmark = pytest.mark.slow

SENTENCES = ("The archive holds letters from the harbour. Sailors wrote them during long winters. "
             "Each letter describes the weather and the ships. Historians read them to date the storms.")


def test_25_mb_upload_completes_with_bounded_gateway_memory(broker: str, tmp_path) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={"CONVEYOR_SUMMARY_SENTENCES": "2",
                                                          "CONVEYOR_SUMMARY_MIN_SENTENCES": "2"})
    pipeline.start_all()
    try:
        document = large_pdf_bytes(SENTENCES, megabytes=25)
        assert len(document) >= 25 * 1024 * 1024
        gateway = psutil.Process(pipeline.processes["gateway"].pid)
        baseline = gateway.memory_info().rss
        peak = baseline
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, gateway.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        response = pipeline.client.post("/upload", data={"user_id": "u1"},
                              files={"file": ("archive.pdf", document, "application/pdf")}, timeout=120)
        sampling = False
        sampler.join()
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]

        job = pipeline.wait_for([job_id], timeout=180)[job_id]

        growth_mb = (peak - baseline) / 2**20
        print(f"gateway RSS {baseline / 2**20:.1f} MB -> peak {peak / 2**20:.1f} MB (+{growth_mb:.1f} MB) "
              f"for a {len(document) / 2**20:.1f} MB upload")
        assert growth_mb < 12, f"gateway grew {growth_mb:.1f} MB for a 25 MB upload"
        assert job["meta"]["size"] == len(document)
        summary = [s.strip() for s in job["summary"].split(". ") if s.strip()]
        assert len(summary) == 2
        assert all(s.rstrip(".") + "." in SENTENCES for s in summary), summary
        assert list((tmp_path / "blobs").iterdir()) == []  # the 25 MB blob went with its completed job
    finally:
        pipeline.stop_all()


def test_upload_over_the_limit_is_413_before_it_is_stored(broker: str, tmp_path) -> None:
    pipeline = Pipeline(broker, tmp_path, extra_env={"CONVEYOR_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024)})
    pipeline.start_gateway()
    try:
        response = pipeline.client.post("/upload", data={"user_id": "u1"},
                              files={"file": ("big.txt", b"word " * 600_000, "text/plain")}, timeout=60)
        assert response.status_code == 413
        assert "exceeds" in response.json()["detail"]
        assert list((tmp_path / "blobs").iterdir()) == []
    finally:
        pipeline.stop_all()

"""Untrusted parsing runs in killable, memory-capped child processes (conveyor.isolation)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

import psutil
import pytest

import isolated_calls as calls
from conveyor.errors import PermanentError
from conveyor.isolation import CallOutOfMemory, CallTimedOut, ChildDied, IsolatedPool


@pytest.fixture
async def pool():  # type: ignore[no-untyped-def]
    pool = IsolatedPool(1, memory_mb=256)
    yield pool
    await pool.close()


async def test_a_call_past_its_deadline_is_killed_and_the_next_one_runs(pool: IsolatedPool) -> None:
    first = await pool.run(calls.pid, timeout=30)
    started = time.monotonic()
    with pytest.raises(CallTimedOut):
        await pool.run(calls.hang, timeout=0.5)
    assert time.monotonic() - started < 5
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert await pool.run(calls.pid, timeout=30) != first, "a fresh process took its place"


async def test_a_call_past_the_memory_cap_fails_alone(pool: IsolatedPool) -> None:
    worker_rss = psutil.Process().memory_info().rss
    with pytest.raises(CallOutOfMemory):
        await pool.run(calls.allocate, 1024, timeout=30)
    assert await pool.run(calls.allocate, 16, timeout=30) == 16 * 1024 * 1024
    assert psutil.Process().memory_info().rss < worker_rss + 50 * 1024 * 1024


async def test_a_call_that_kills_its_process_fails_alone(pool: IsolatedPool) -> None:
    with pytest.raises(ChildDied):
        await pool.run(calls.crash, timeout=30)
    assert await pool.run(calls.pid, timeout=30) > 0


async def test_errors_of_the_call_reach_the_caller_and_keep_the_process(pool: IsolatedPool) -> None:
    first = await pool.run(calls.pid, timeout=30)
    with pytest.raises(PermanentError, match="not a document"):
        await pool.run(calls.refuse, timeout=30)
    assert await pool.run(calls.pid, timeout=30) == first


async def test_cancelling_a_call_kills_its_process(pool: IsolatedPool) -> None:
    first = await pool.run(calls.pid, timeout=30)
    task = asyncio.create_task(pool.run(calls.hang, timeout=3600))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert await pool.run(calls.pid, timeout=30) != first


async def test_close_leaves_no_process_behind() -> None:
    pool = IsolatedPool(2, memory_mb=0)
    pids = {await pool.run(calls.pid, timeout=30) for _ in range(4)}
    await pool.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def docx_bomb(inflated_mb: int) -> bytes:
    """A small .docx whose document.xml inflates to `inflated_mb` MB of text."""
    paragraph = "<w:p><w:r><w:t>" + "a" * 10_000 + "</w:t></w:r></w:p>"
    body = paragraph * (inflated_mb * 100)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        archive.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>')
        archive.writestr("word/document.xml", '<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>' + body + "</w:body></w:document>")
    return buffer.getvalue()


async def test_a_docx_that_inflates_past_the_cap_fails_and_the_worker_stays_small() -> None:
    from conveyor.extractor.extract import extract_text

    bomb = docx_bomb(400)
    assert len(bomb) < 3 * 1024 * 1024
    pool = IsolatedPool(1, memory_mb=256, preload="conveyor.extractor.extract")
    try:
        worker_rss = psutil.Process().memory_info().rss
        # The cap stops the inflation: as an out-of-memory call, or as the DOCX reader's own
        # refusal when its buffer cannot be allocated. Either way the record fails alone.
        with pytest.raises((CallOutOfMemory, ChildDied, PermanentError)):
            await pool.run(extract_text, bomb, content_type=None, filename="bomb.docx", timeout=60)
        assert psutil.Process().memory_info().rss < worker_rss + 50 * 1024 * 1024
        ok = await pool.run(extract_text, b"plain text survives", content_type="text/plain", filename=None, timeout=60)
        assert ok.text == "plain text survives"
    finally:
        await pool.close()

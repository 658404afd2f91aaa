"""Untrusted parsing runs in killable, memory-capped child processes (conveyor.isolation)."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from pathlib import Path

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


def _parser_processes() -> list[psutil.Process]:
    """The pools' children: forked by this process's fork server."""
    servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
    return [child for server in servers for child in server.children()]


async def test_a_long_call_moves_to_the_background_and_the_calls_behind_it_go_on() -> None:
    pool = IsolatedPool(1, memory_mb=0, background_after=0.2)
    try:
        base = await pool.run(calls.niceness, timeout=30)
        long = asyncio.create_task(pool.run(calls.hang, timeout=4))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        # One process, and it is busy: the call behind it runs in the child that took its place.
        assert await pool.run(calls.niceness, timeout=30) == base
        assert time.monotonic() - started < 2
        background = [child for child in _parser_processes() if child.nice() == base + 10]
        assert len(background) == 1
        with pytest.raises(CallTimedOut):  # it keeps its deadline
            await long
        assert not background[0].is_running() or background[0].status() == psutil.STATUS_ZOMBIE
    finally:
        await pool.close()


async def test_no_more_calls_go_to_the_background_than_the_pool_has_processes() -> None:
    pool = IsolatedPool(1, memory_mb=0, background_after=0.1)
    try:
        hung = [asyncio.create_task(pool.run(calls.hang, timeout=3)) for _ in range(3)]
        await asyncio.sleep(1.0)
        # The first moved to the background; the second kept its place, the third waits for it.
        assert len(_parser_processes()) == 2
        for task in hung:
            with pytest.raises(CallTimedOut):
                await task
    finally:
        await pool.close()


async def test_a_long_call_that_found_the_background_full_moves_there_once_a_place_frees_up() -> None:
    pool = IsolatedPool(1, memory_mb=0, background_after=0.1)
    try:
        first = asyncio.create_task(pool.run(calls.hang, timeout=1))  # the background's one place
        await asyncio.sleep(0.3)
        second = asyncio.create_task(pool.run(calls.hang, timeout=8))  # finds it taken: keeps its slot
        await asyncio.sleep(0.3)
        started = time.monotonic()
        # Waits for the slot: the second moves to the background soon after the first ends.
        await pool.run(calls.niceness, timeout=30)
        assert time.monotonic() - started < 3, "the call waited for the second one's deadline"
        with pytest.raises(CallTimedOut):
            await first
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
    finally:
        await pool.close()


def test_a_killed_worker_takes_its_parser_processes_with_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import asyncio, sys\n"
        "sys.path.insert(0, %r)\n"
        "import isolated_calls as calls\n"
        "from conveyor.isolation import IsolatedPool\n"
        "async def main():\n"
        "    pool = IsolatedPool(2, memory_mb=0)\n"
        "    print(await pool.run(calls.pid, timeout=30), flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n" % str(Path(__file__).parent))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        parser = int(worker.stdout.readline())
        family = [p for p in psutil.Process(worker.pid).children(recursive=True)]
        assert parser in {p.pid for p in family} and len(family) >= 3  # the fork server and two children
        worker.kill()
        worker.wait(10)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        worker.kill()

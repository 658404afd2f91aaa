"""Poison: 1% of the documents hang the parser (a 31 KB PDF whose content stream takes pypdf
seconds of CPU) or blow its memory (a 2 MB .docx that inflates to 400 MB), through the whole
pipeline (extractor, summarizer, notifier) on the embedded broker. The same healthy documents run
again without the poison, in the same run.

Figures: seconds until the last healthy job is done, with and without poison, and their ratio;
how many poison jobs reached the dead-letter topic and after how many attempts.

    python bench/poison.py --docs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from documents import english_text  # noqa: E402
from stages import StageRun  # noqa: E402
from test_isolation import docx_bomb  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.events import Event, Payload  # noqa: E402
from conveyor.ids import new_job_id  # noqa: E402
from conveyor.stores.base import StageState  # noqa: E402
from conveyor.topics import STAGES  # noqa: E402

SETTINGS = {"CONVEYOR_PARSE_TIMEOUT_SECONDS": "2", "CONVEYOR_PARSE_MEMORY_MB": "256", "CONVEYOR_MAX_ATTEMPTS": "3",
            "CONVEYOR_RETRY_BASE_SECONDS": "0.5", "CONVEYOR_RETRY_MAX_SECONDS": "2"}


def slow_pdf() -> bytes:
    """One page whose content stream is 400,000 text operators (31 KB compressed)."""
    stream = zlib.compress(b"BT /F1 12 Tf 10 10 Td (a) Tj ET\n" * 400_000, 9)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def healthy(count: int) -> list[Event]:
    return [Event(job_id=new_job_id(), user_id="bench", stage="extractor",
                  payload=Payload(text=english_text(seed=i, sentences=12)[:2048])) for i in range(count)]


def poison(count: int) -> list[Event]:
    pdf, docx = slow_pdf(), docx_bomb(400)
    return [Event(job_id=new_job_id(), user_id="bench", stage="extractor",
                  payload=Payload.from_bytes(pdf, content_type="application/pdf", filename="slow.pdf") if i % 2 == 0
                  else Payload.from_bytes(docx, filename="bomb.docx")) for i in range(count)]


async def run_once(bootstrap: str, home: Path, events: list[Event], healthy_ids: set[str]) -> tuple[float, dict]:
    run = StageRun(bootstrap, home, env=SETTINGS)
    await run.start(*STAGES)
    try:
        started = await run.send(events)
        done = await run.wait(sorted(healthy_ids), STAGES[-1], timeout=3600)
        poisoned = await run.wait([e.job_id for e in events if e.job_id not in healthy_ids], STAGES[0], timeout=3600)
    finally:
        run.stop()
    last_healthy = max(r.stages[STAGES[-1]].updated_at.timestamp() for r in done.values())
    return last_healthy - started, {**done, **poisoned}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()
    bad_count = max(2, args.docs // 100)
    good = healthy(args.docs - bad_count)
    bad = poison(bad_count)
    mixed = good[:]
    for index, event in enumerate(bad):  # spread through the stream
        mixed.insert((index + 1) * len(good) // (bad_count + 1), event)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        clean_seconds, _ = await run_once(broker.bootstrap, Path(tmp) / "clean",
                                          [e.model_copy(update={"job_id": "c" + e.job_id}) for e in good],
                                          {"c" + e.job_id for e in good})
        poisoned_seconds, records = await run_once(broker.bootstrap, Path(tmp) / "poison", mixed,
                                                   {e.job_id for e in good})
    healthy_failed = sum(1 for e in good if records[e.job_id].stages[STAGES[-1]].state != StageState.done)
    letters = [records[e.job_id].stages["extractor"] for e in bad]
    dead = [p for p in letters if p.state == StageState.failed]
    attempts = sorted({p.attempts for p in dead})
    print(f"{len(good)} healthy documents, {len(bad)} poison ({len(bad) - len(bad) // 2} slow PDFs, "
          f"{len(bad) // 2} inflating .docx); parse timeout 2 s, memory cap 256 MB, max attempts 3")
    print("| run | seconds to the last healthy job | ratio |")
    print("|---|---|---|")
    print(f"| without poison (baseline) | {clean_seconds:.1f} | 1.00 |")
    print(f"| with 1% poison | {poisoned_seconds:.1f} | {poisoned_seconds / clean_seconds:.2f} |")
    print(f"\nhealthy jobs not done: {healthy_failed}; poison jobs dead-lettered: {len(dead)}/{len(bad)} "
          f"(attempts used: {attempts}; errors: {sorted({(p.error or '')[:60] for p in dead})})")


if __name__ == "__main__":
    asyncio.run(main())

"""Embedder throughput: chunks/s of the embedder stage (offline minilm backend, embedded Qdrant,
one worker process on the embedded broker) beside the model alone in this process, embedding the
same chunks in the same batches with nothing else around it.

Both get the same documents (English text, ~4,000 characters, about 4-5 chunks of up to 1,000
characters each). The stage's figure includes everything a record costs: Kafka, the job store,
chunking, the Qdrant upsert and the hand-off to the next stage.

    python bench/embedder.py --docs 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from documents import english_text  # noqa: E402
from stages import StageRun, run  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.document import Document  # noqa: E402
from conveyor.embedder.backends.minilm import MiniLM, model_folder  # noqa: E402
from conveyor.embedder.chunking import chunk_document  # noqa: E402
from conveyor.events import Event, Payload  # noqa: E402
from conveyor.ids import new_job_id  # noqa: E402
from conveyor.stores.base import StageState  # noqa: E402

PIPELINE = "extractor,embedder,summarizer,notifier"
BATCH = 16


def model_alone(documents: list[Document]) -> tuple[int, float]:
    """Chunks, and seconds the model takes to embed them in batches of BATCH."""
    model = MiniLM(model_folder())
    texts = [chunk.embedded_text for document in documents for chunk in chunk_document(document, 1000)]
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        model.encode(texts[start:start + BATCH])
    return len(texts), time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200)
    args = parser.parse_args()
    documents = [Document.from_text(english_text(seed=i, sentences=30)[:4000]) for i in range(args.docs)]

    chunks, seconds = model_alone(documents)
    baseline = chunks / seconds

    events = [Event(job_id=new_job_id(), user_id="bench", stage="embedder",
                    payload=Payload(text=document.encode().decode(), content_type="application/vnd.conveyor.blocks+json"))
              for document in documents]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        stages = StageRun(broker.bootstrap, Path(tmp), env={"CONVEYOR_PIPELINE_STAGES": PIPELINE,
                                                            "CONVEYOR_EMBED_BATCH_SIZE": str(BATCH)})
        try:
            await stages.start("embedder")
            started = time.time()
            await stages.send(events)
            records = await stages.wait([e.job_id for e in events], "embedder", timeout=1800)
            elapsed = max(r.stages["embedder"].updated_at.timestamp() for r in records.values()) - started
        finally:
            stages.stop()
    failed = sum(r.stages["embedder"].state == StageState.failed for r in records.values())
    embedded = sum(int(r.meta.get("embedded_chunks", 0)) for r in records.values())
    rate = embedded / elapsed
    print(f"{args.docs} documents, {chunks} chunks (<= 1,000 characters), batches of {BATCH}, same machine and run")
    print("| run | chunks/s |")
    print("|---|---|")
    print(f"| the model alone, in-process (baseline) | {baseline:.1f} |")
    print(f"| embedder stage: Kafka, job store, chunking, Qdrant upserts | {rate:.1f} |")
    print(f"\nratio {rate / baseline:.2f}; {failed} failed; {embedded} chunks embedded")


if __name__ == "__main__":
    run(main)

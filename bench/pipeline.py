"""Pipeline throughput: Conveyor's three stages against plain aiokafka loops over the same hops.

Both runs get the same 2 KB English documents on the same embedded broker (6 partitions) and do
the same work per hop: extract/normalise -> TextRank (3 sentences) -> record completion. Figures:
jobs/s (first send -> last completion) and end-to-end latency p50/p99.

    python bench/pipeline.py --docs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from documents import english_text  # noqa: E402

from conveyor.events import Event, Payload  # noqa: E402
from conveyor.ids import new_job_id  # noqa: E402
from conveyor.kafka.admin import ensure_topics  # noqa: E402
from conveyor.kafka.clients import make_consumer, make_producer  # noqa: E402
from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.settings import Settings  # noqa: E402
from conveyor.stores.base import JobRecord  # noqa: E402
from conveyor.stores.sqlite_store import SqliteJobStore  # noqa: E402
from conveyor.topics import STAGES, input_topic  # noqa: E402


RUN_TIMEOUT_SECONDS = 900


def documents(count: int) -> list[str]:
    return [english_text(seed=i, sentences=12)[:2048] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- Baseline: plain aiokafka consume -> work -> produce loops, commit per batch ------------------

def _baseline_hop(bootstrap: str, source: str, target: str, work: str, group: str) -> None:
    asyncio.run(_baseline_hop_async(bootstrap, source, target, work, group))


async def _baseline_hop_async(bootstrap: str, source: str, target: str, work: str, group: str) -> None:
    from conveyor.extractor.extract import extract_text
    from conveyor.summarizer.backends.textrank import rank_sentences, split_sentences

    settings = Settings(bootstrap_servers=bootstrap)
    consumer = make_consumer(settings, source, group_id=group)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=64)
            for records in batches.values():
                futures = []
                for record in records:
                    doc = json.loads(record.value)
                    if work == "extract":
                        doc["text"] = extract_text(doc["text"].encode(), content_type="text/plain").text
                    elif work == "summarize":
                        sentences = split_sentences(doc["text"])
                        doc["text"] = " ".join(sentences[i] for i in rank_sentences(sentences, 3))
                    else:
                        doc["done"] = time.time()
                    futures.append(await producer.send(target, json.dumps(doc).encode()))
                await asyncio.gather(*futures)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def run_baseline(bootstrap: str, docs: list[str]) -> tuple[float, list[float]]:
    prefix = f"base{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}.{n}" for n in ("extract", "summarize", "notify", "done")]
    settings = Settings(bootstrap_servers=bootstrap, partitions=6)
    await ensure_topics(settings, topics)
    hops = [("extract", topics[0], topics[1]), ("summarize", topics[1], topics[2]), ("record", topics[2], topics[3])]
    processes = [multiprocessing.Process(target=_baseline_hop, args=(bootstrap, src, dst, work, f"{prefix}-{work}"),
                                         daemon=True) for work, src, dst in hops]
    for process in processes:
        process.start()
    await asyncio.sleep(8)  # let every group join before the clock starts
    done = make_consumer(settings, topics[3], group_id=None)
    await done.start()
    producer = make_producer(settings)
    await producer.start()
    started = time.time()
    await asyncio.gather(*[await producer.send(topics[0], json.dumps({"id": i, "text": d, "sent": time.time()}).encode())
                           for i, d in enumerate(docs)])
    latencies: list[float] = []
    last = started
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while len(latencies) < len(docs):
        if time.monotonic() > deadline or any(not p.is_alive() for p in processes):
            raise SystemExit(f"baseline run stopped at {len(latencies)}/{len(docs)} documents")
        for records in (await done.getmany(timeout_ms=1000)).values():
            for record in records:
                doc = json.loads(record.value)
                latencies.append(doc["done"] - doc["sent"])
                last = max(last, doc["done"])
    await producer.stop()
    await done.stop()
    for process in processes:
        process.terminate()
    return len(docs) / (last - started), latencies


# --- Conveyor: the real worker processes, jobs recorded in the status store ------------------------

async def run_conveyor(bootstrap: str, docs: list[str], home: Path, extra_env: dict[str, str]) -> tuple[float, list[float]]:
    prefix = f"conv{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "CONVEYOR_BOOTSTRAP_SERVERS": bootstrap, "CONVEYOR_TOPIC_PREFIX": prefix,
           "CONVEYOR_HOME": str(home), "CONVEYOR_PARTITIONS": "6", "CONVEYOR_LOG_LEVEL": "WARNING",
           "CONVEYOR_WEBHOOK_SECRET": "bench-secret", **extra_env}
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, home=home, partitions=6)
    workers = [subprocess.Popen([sys.executable, "-m", "conveyor.cli.main", "worker", stage], env=env)
               for stage in STAGES]
    store = SqliteJobStore(settings.resolved_sqlite_path())
    await ensure_topics(settings, [input_topic(s, prefix) for s in STAGES])
    await asyncio.sleep(8)
    producer = make_producer(settings)
    await producer.start()
    started = time.time()
    events = [Event(job_id=new_job_id(), user_id="bench", stage="extractor", payload=Payload(text=d))
              for d in docs]
    for event in events:
        await store.create(JobRecord(job_id=event.job_id, user_id="bench"))
    topic = input_topic("extractor", prefix)
    await asyncio.gather(*[await producer.send(topic, e.to_bytes(), key=e.job_id.encode()) for e in events])
    await producer.stop()
    db = sqlite3.connect(settings.resolved_sqlite_path())
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        rows = db.execute("SELECT record FROM jobs WHERE record LIKE '%\"state\":\"completed\"%'").fetchall()
        if len(rows) >= len(docs):
            break
        dead = [stage for stage, w in zip(STAGES, workers) if w.poll() is not None]
        if dead or time.monotonic() > deadline:
            for worker in workers:
                worker.kill()
            raise SystemExit(f"conveyor run stopped at {len(rows)}/{len(docs)} jobs"
                             + (f": {', '.join(dead)} worker exited" if dead else " (timed out)"))
        await asyncio.sleep(0.5)
    records = [JobRecord.model_validate_json(r[0]) for r in rows]
    latencies = [(r.updated_at - r.created_at).total_seconds() for r in records]
    last = max(r.updated_at.timestamp() for r in records)
    for worker in workers:
        worker.terminate()
        worker.wait()
    await store.close()
    first = min(r.created_at.timestamp() for r in records)
    return len(docs) / (last - min(first, started)), latencies


class _OtlpSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP span exports and discards them: tracing cost without a collector's."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def row(name: str, rate: float, latencies: list[float]) -> str:
    return (f"| {name:<40} | {rate:8.1f} | {percentile(latencies, 0.5) * 1000:9.0f} | "
            f"{percentile(latencies, 0.99) * 1000:9.0f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="documents per run (default 2000)")
    parser.add_argument("--tracing", action="store_true", help="also run Conveyor with tracing on")
    args = parser.parse_args()
    docs = documents(args.docs)
    results = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        print(f"{len(docs)} documents of ~{statistics.mean(len(d) for d in docs):.0f} bytes; broker {broker.bootstrap}",
              file=sys.stderr)
        results.append(("plain aiokafka loops (baseline)", *await run_baseline(broker.bootstrap, docs)))
        results.append(("conveyor workers", *await run_conveyor(broker.bootstrap, docs, Path(tmp) / "a", {})))
        if args.tracing:
            sink = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
            threading.Thread(target=sink.serve_forever, daemon=True).start()
            traced = {"OTEL_TRACES_EXPORTER": "otlp",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"}
            results.append(("conveyor workers, tracing on (OTLP)", *await run_conveyor(broker.bootstrap, docs,
                                                                                        Path(tmp) / "b", traced)))
            sink.shutdown()
    print("| run                                      |   jobs/s |  p50 (ms) |  p99 (ms) |")
    print("|------------------------------------------|----------|-----------|-----------|")
    for name, rate, latencies in results:
        print(row(name, rate, latencies))
    print(f"\nconveyor / baseline throughput: {results[1][1] / results[0][1]:.2f}")
    if args.tracing:
        print(f"tracing on / off throughput: {results[2][1] / results[1][1]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())

"""Framework overhead per hop: CPU per record per stage of three pass-through stages, Conveyor's
stage runtime against a plain aiokafka consume -> produce -> commit loop, in the same run.

Both pass the same documents through three hops on the same embedded broker (6 partitions) and do
no work of their own. Conveyor's stages keep every guarantee and the same status detail as the
real pipeline (durable attempt counts and per-stage status in the SQLite job store, DLQ, retries,
idempotency); the plain loop has none of them. CPU is the user+system time of the three stage
processes while the documents flow.

    python bench/hops.py --docs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pipeline import _baseline_hop, documents  # noqa: E402
from stages import StageRun  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.events import Event, Payload  # noqa: E402
from conveyor.ids import new_job_id  # noqa: E402
from conveyor.kafka.admin import ensure_topics  # noqa: E402
from conveyor.kafka.clients import make_consumer, make_producer  # noqa: E402
from conveyor.kafka.stage import Stage  # noqa: E402
from conveyor.settings import Settings  # noqa: E402
from conveyor.stores.base import JobStore  # noqa: E402
from conveyor.stores.blobs import BlobStore  # noqa: E402
from conveyor.topics import STAGES  # noqa: E402

RUN_TIMEOUT_SECONDS = 900


def pass_through(name: str):  # type: ignore[no-untyped-def]
    """A stage that forwards each event to the next stage and does nothing else."""
    def build(settings: Settings, store: JobStore, blobs: BlobStore, resources: AsyncExitStack) -> Stage:
        async def forward(event: Event) -> Event | None:
            return event.next()

        return Stage(name, forward)
    return build


def cpu_seconds(pids: list[int]) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


async def conveyor_hops(bootstrap: str, count: int, home: Path) -> tuple[float, float]:
    """(docs/s, CPU us per hop) of three Conveyor stage processes."""
    run = StageRun(bootstrap, home, worker_argv=lambda stage: [sys.executable, __file__, "--stage", stage])
    await run.start(*STAGES)
    events = [Event(job_id=new_job_id(), user_id="bench", stage="extractor", payload=Payload(text=d))
              for d in documents(count)]
    cpu_before = cpu_seconds([w.pid for w in run.workers])
    try:
        started = await run.send(events)
        records = await run.wait([e.job_id for e in events], STAGES[-1], timeout=RUN_TIMEOUT_SECONDS)
        cpu = cpu_seconds([w.pid for w in run.workers]) - cpu_before
    finally:
        run.stop()
    elapsed = max(r.stages[STAGES[-1]].updated_at.timestamp() for r in records.values()) - started
    return count / elapsed, cpu / (count * len(STAGES)) * 1e6


async def plain_hops(bootstrap: str, count: int) -> tuple[float, float]:
    """(docs/s, CPU us per hop) of three plain aiokafka loops."""
    prefix = f"plain{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}.{i}" for i in range(4)]
    settings = Settings(bootstrap_servers=bootstrap, partitions=6)
    await ensure_topics(settings, topics)
    processes = [multiprocessing.Process(target=_baseline_hop, args=(bootstrap, topics[i], topics[i + 1], "record",
                                                                     f"{prefix}-{i}"), daemon=True) for i in range(3)]
    for process in processes:
        process.start()
    done = make_consumer(settings, topics[3], group_id=None)
    await done.start()
    await asyncio.sleep(8)
    cpu_before, started = cpu_seconds([p.pid for p in processes]), time.time()
    producer = make_producer(settings)
    await producer.start()
    await asyncio.gather(*[await producer.send(topics[0], json.dumps({"id": i, "text": d, "sent": time.time()}).encode())
                           for i, d in enumerate(documents(count))])
    await producer.stop()
    seen = 0
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while seen < count:
        if time.monotonic() > deadline or any(not p.is_alive() for p in processes):
            raise SystemExit(f"plain run stopped at {seen}/{count}")
        seen += sum(len(r) for r in (await done.getmany(timeout_ms=200)).values())
    elapsed, cpu = time.time() - started, cpu_seconds([p.pid for p in processes]) - cpu_before
    await done.stop()
    for process in processes:
        process.terminate()
    return count / elapsed, cpu / (count * 3) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="documents per run (default 2000)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage
    args = parser.parse_args()
    if args.stage:
        from conveyor.worker import run_worker

        await run_worker(args.stage, pass_through(args.stage), Settings())
        return
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        plain_rate, plain_cpu = await plain_hops(broker.bootstrap, args.docs)
        rate, cpu = await conveyor_hops(broker.bootstrap, args.docs, Path(tmp))
    print(f"{args.docs} documents, three pass-through hops, same broker and run")
    print("| run | docs/s | CPU per hop (us) |")
    print("|---|---|---|")
    print(f"| plain aiokafka loop (baseline) | {plain_rate:.0f} | {plain_cpu:.0f} |")
    print(f"| Conveyor stage runtime | {rate:.0f} | {cpu:.0f} |")
    print(f"\nCPU per hop, Conveyor / baseline: {cpu / plain_cpu:.2f}; throughput ratio {rate / plain_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())

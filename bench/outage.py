"""Outage: the LLM provider answers 503 to every call for D seconds while J summarizer jobs wait,
then recovers (each answer then takes a log-normal latency, median 0.5 s, sigma 0.5). The
summarizer worker (openai backend, CONVEYOR_OPENAI_MAX_CONCURRENCY=8, default circuit breaker:
opens after 16 consecutive failures, probes after 1 s, doubling to at most 30 s) runs once per
outage length on fresh topics, and once without an outage: the baseline, in the same run.

Figures per outage length: calls that reached the provider during the outage (goal: the
breaker's threshold plus its probes, a few dozen at most, not a storm); seconds from the
provider's return to the last job done, and its ratio to the baseline's time to drain the same J
jobs (first send to last job done); calls per job after the return (goal <= 1.2); jobs failed and
records dead-lettered (goal 0: an outage is not the records' fault); whether the worker's
/healthz answered 200 at every poll (once a second, from the worker's start to the last job; goal:
yes, so Kubernetes does not restart a worker that is only waiting). The recovery can lag the
return by up to the probe interval ceiling (30 s), which the worker needs to notice it.

    python bench/outage.py --outage 30,120,600 --jobs 200
    python bench/outage.py --outage 10 --jobs 100     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm import Received, Reply, lognormal_latency, serving, summarizer_env, summarizer_jobs  # noqa: E402
from stages import StageRun, run  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from conveyor.stores.base import StageState  # noqa: E402

STAGE = "summarizer"


@dataclass
class Health:
    """What the worker's /healthz answered, polled once a second."""

    polls: int = 0
    failures: list[str] = field(default_factory=list)  # "<seconds into the run>: <answer>"

    async def watch(self, port: int) -> None:
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/healthz")
                    status = f"{answer.status_code} {answer.text.strip()}"
                except httpx.HTTPError as exc:
                    answer, status = None, f"{type(exc).__name__}: {exc}"
                self.polls += 1
                if answer is None or answer.status_code != 200:
                    self.failures.append(f"{time.monotonic() - began:.0f}s: {status}")
                await asyncio.sleep(1)


@dataclass
class Result:
    outage: float  # seconds; 0 for the baseline
    jobs: int
    seconds: float  # baseline: first send to last done; outage: provider's return to last done
    calls_during: int
    calls_after_per_job: float
    failed: int
    dead_letters: int
    health: Health


async def one_run(bootstrap: str, home: Path, logs: Path, *, jobs: int, outage: float,
                  args: argparse.Namespace) -> Result:
    latency = lognormal_latency(7, median=args.latency, sigma=args.sigma)
    down_until = [0.0]  # time.monotonic() until which every call is answered 503

    def provider(received: Received) -> Reply:
        return Reply.error(503) if received.at < down_until[0] else Reply.slow(latency())

    events = summarizer_jobs(jobs)
    health = Health()
    port = free_port()
    with serving(provider) as fake:
        stages = StageRun(bootstrap, home, log_dir=logs, env=summarizer_env(
            fake.url, concurrency=args.concurrency, CONVEYOR_METRICS_PORT=str(port), CONVEYOR_LOG_LEVEL="INFO"))
        watcher: asyncio.Task[None] | None = None
        try:
            await stages.start(STAGE)
            watcher = asyncio.create_task(health.watch(port))
            down_from, down_until[0] = time.monotonic(), time.monotonic() + outage
            returned = time.time() + outage
            started = await stages.send(events)
            records = await stages.wait([e.job_id for e in events], STAGE, timeout=outage + 900)
            dead_letters = await stages.dead_letters(STAGE)
        finally:
            if watcher is not None:
                watcher.cancel()
            stages.stop()
    done = [r for r in records.values() if r.stages[STAGE].state == StageState.done]
    last = max((r.stages[STAGE].updated_at.timestamp() for r in done), default=float("nan"))
    during = sum(1 for r in fake.requests if down_from <= r.at < down_until[0])
    return Result(outage=outage, jobs=len(events), seconds=last - (returned if outage else started),
                  calls_during=during, calls_after_per_job=(len(fake.requests) - during) / len(events),
                  failed=len(records) - len(done), dead_letters=dead_letters, health=health)


def seconds_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seconds: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("outage lengths must be positive seconds")
    return values


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=seconds_list, default=[30.0, 120.0, 600.0],
                        help="outage lengths in seconds, comma separated, one run each (default 30,120,600)")
    parser.add_argument("--jobs", type=int, default=200, help="summarizer jobs per run (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="CONVEYOR_OPENAI_MAX_CONCURRENCY (default 8)")
    parser.add_argument("--latency", type=float, default=0.5,
                        help="median seconds of an answer once the provider is back (default 0.5)")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal sigma of that latency; 0: fixed (default 0.5)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="directory for the workers' logs, one per run (default: a new directory under /tmp, kept)")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="conveyor-outage-"))
    results: list[Result] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for outage in [0.0, *args.outage]:
            name = f"outage-{outage:g}s" if outage else "baseline"
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(await one_run(broker.bootstrap, Path(tmp) / name, logs / name, jobs=args.jobs,
                                         outage=outage, args=args))
    baseline = results[0]
    print(f"{baseline.jobs} jobs per run; provider answers 503 to every call during the outage, then after a "
          f"log-normal latency (median {args.latency:g} s, sigma {args.sigma:g}); LLM concurrency "
          f"{args.concurrency}; worker logs in {logs}")
    print("| run | calls during the outage | seconds to the last job (baseline: drain; outage: from the return) "
          "| ratio to baseline | calls per job after the return | failed | dead-lettered | /healthz 200 throughout |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        health = result.health
        healthy = "yes" if not health.failures else f"no: {len(health.failures)}/{health.polls} polls failed"
        name = f"outage {result.outage:g} s" if result.outage else "no outage (baseline)"
        print(f"| {name} | {result.calls_during} | {result.seconds:.1f} | {result.seconds / baseline.seconds:.2f} "
              f"| {result.calls_after_per_job:.2f} | {result.failed} | {result.dead_letters} | {healthy} "
              f"({health.polls} polls) |")
    for result in results:
        if result.health.failures:
            print(f"/healthz failures, outage {result.outage:g} s: {result.health.failures[:10]}")


if __name__ == "__main__":
    run(main)

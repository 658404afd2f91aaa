"""LLM storm: the summarizer on the openai backend against a local OpenAI-compatible server that
answers 30% of calls with 429 (Retry-After: 1), 5% with 500, and the rest after a log-normal
latency (p50 1 s, p99 20 s).

Figures: jobs/s beside the bound `LLM concurrency / mean latency` (the log-normal's mean,
exp(sigma^2 / 2) = 2.29 s), the ratio, p99 end-to-end, calls per job, duplicate
LLM calls (jobs answered 200 more than once) and dead letters.

    python bench/llm_storm.py --jobs 2000
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm import Received, Reply, lognormal_mean, serving, summarizer_env, summarizer_jobs  # noqa: E402
from stages import StageRun, run  # noqa: E402

from fakes.openai_server import CLIENT_CLOSED  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.stores.base import StageState  # noqa: E402

P99_SIGMA = math.log(20) / 2.326  # p50 1 s (mu = 0), p99 20 s


def storm(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)

    def answer(_: Received) -> Reply:
        roll = rng.random()
        if roll < 0.30:
            return Reply.rate_limited(retry_after=1)
        if roll < 0.35:
            return Reply.error(500)
        return Reply.slow(rng.lognormvariate(0, P99_SIGMA))
    return answer


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8, help="LLM calls in flight (default 8)")
    args = parser.parse_args()
    events = summarizer_jobs(args.jobs)
    with serving(storm(seed=7)) as fake, EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        stages = StageRun(broker.bootstrap, Path(tmp), env=summarizer_env(fake.url, concurrency=args.concurrency))
        try:
            await stages.start("summarizer")
            started = await stages.send(events)
            records = await stages.wait([e.job_id for e in events], "summarizer", timeout=7200)
        finally:
            stages.stop()
    done = [r for r in records.values() if r.stages["summarizer"].state == StageState.done]
    failed = len(records) - len(done)
    last = max(r.stages["summarizer"].updated_at.timestamp() for r in records.values())
    rate = len(done) / (last - started)
    latencies = sorted(r.stages["summarizer"].updated_at.timestamp() - started for r in done)
    mean_latency = lognormal_mean(1.0, P99_SIGMA)
    bound = args.concurrency / mean_latency
    # Each job's prompt is unique: a prompt answered 200 more than once is a duplicate LLM call.
    answered = Counter(received.body["messages"][-1]["content"] for received, status in fake.answers if status == 200)
    duplicates = sum(1 for n in answered.values() if n > 1)
    # Calls the summarizer gave up on at its deadline (CONVEYOR_OPENAI_TIMEOUT_SECONDS) and made
    # again: no answer was read, but a provider may still bill them.
    abandoned = sum(1 for _, status in fake.answers if status == CLIENT_CLOSED)
    print(f"{args.jobs} jobs, LLM concurrency {args.concurrency}, mean latency of a successful call "
          f"{mean_latency:.2f} s (bound {bound:.2f} jobs/s)")
    print("| jobs/s | bound | ratio | p99 end-to-end (s) | calls per job | duplicate LLM calls | "
          "calls abandoned at the deadline | dead letters |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {rate:.2f} | {bound:.2f} | {rate / bound:.2f} | {latencies[int(0.99 * (len(latencies) - 1))]:.0f} | "
          f"{len(fake.requests) / len(events):.2f} | {duplicates} | {abandoned} | {failed} |")


if __name__ == "__main__":
    run(main)

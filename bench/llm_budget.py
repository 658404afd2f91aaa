"""The budgeted provider: an OpenAI-compatible server (the repo's fake, on 127.0.0.1) that serves
at most 4 calls at once. A call that arrives while 4 others are being answered gets 429 with
Retry-After: 1 at once; every other call succeeds after a log-normal latency (median 0.5 s,
sigma 0.5, so a mean of 0.57 s; `--sigma 0` makes it a fixed 0.5 s). The summarizer worker (openai
backend) starts at CONVEYOR_OPENAI_MAX_CONCURRENCY=8, twice what the provider serves, and has to
learn the budget from the 429s.

Figures, beside the bound measured in the same run, `4 / mean latency` (the mean of the successful
answers' latency, arrival to answer, as the server measured it): jobs/s (first send to last job
done) and its ratio to the bound (goal >= 0.85); calls per job, requests the server received over
jobs (goal <= 1.2); 429 answers; records dead-lettered; jobs failed.

    python bench/llm_budget.py --jobs 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm import FakeOpenAI, Received, Reply, answer_latencies, lognormal_latency, serving, summarizer_env, summarizer_jobs  # noqa: E402,E501
from stages import StageRun, run  # noqa: E402

from conveyor.cli.embedded_broker import EmbeddedBroker  # noqa: E402
from conveyor.stores.base import StageState  # noqa: E402

STAGE = "summarizer"


def budgeted(fake: FakeOpenAI, *, budget: int, latency: Callable[[], float], peak: list[int]) -> Callable[[Received], Reply]:
    """429 (Retry-After: 1) for a call beyond `budget` in flight, else an answer after `latency()`."""
    def answer(_: Received) -> Reply:
        peak[0] = max(peak[0], fake.in_flight)  # this call included
        if fake.in_flight > budget:
            return Reply.rate_limited(retry_after=1)
        return Reply.slow(latency())
    return answer


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300, help="summarizer jobs (default 300)")
    parser.add_argument("--budget", type=int, default=4, help="calls the provider serves at once (default 4)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="CONVEYOR_OPENAI_MAX_CONCURRENCY, where the worker starts (default 8)")
    parser.add_argument("--latency", type=float, default=0.5, help="median seconds of a successful answer (default 0.5)")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal sigma of that latency; 0: fixed (default 0.5)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="directory for the worker's log (default: a new directory under /tmp, kept)")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="conveyor-llm-budget-"))
    events = summarizer_jobs(args.jobs)
    peak = [0]
    with serving() as fake, EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        fake.fallback = budgeted(fake, budget=args.budget, peak=peak,
                                 latency=lognormal_latency(7, median=args.latency, sigma=args.sigma))
        stages = StageRun(broker.bootstrap, Path(tmp), env=summarizer_env(fake.url, concurrency=args.concurrency),
                          log_dir=logs)
        try:
            await stages.start(STAGE)
            started = await stages.send(events)
            timeout = 600 + 10 * len(events) * args.latency / args.budget
            records = await stages.wait([e.job_id for e in events], STAGE, timeout=timeout)
            dead_letters = await stages.dead_letters(STAGE)
        finally:
            stages.stop()
    done = [r for r in records.values() if r.stages[STAGE].state == StageState.done]
    failed = len(records) - len(done)
    last = max(r.stages[STAGE].updated_at.timestamp() for r in done) if done else started
    rate = len(done) / (last - started) if done else 0.0
    latencies = answer_latencies(fake)
    mean_latency = statistics.fmean(latencies)
    bound = args.budget / mean_latency
    rate_limited = sum(1 for _, status in fake.answers if status == 429)
    latency_model = (f"log-normal latency, median {args.latency:g} s, sigma {args.sigma:g}" if args.sigma
                     else f"fixed latency {args.latency:g} s")
    print(f"{len(events)} jobs; provider serves {args.budget} calls at once (429, Retry-After: 1 beyond), "
          f"{latency_model}; worker starts at {args.concurrency} calls in flight")
    print(f"mean latency of a successful answer at the server {mean_latency:.3f} s over {len(latencies)} answers; "
          f"most calls the server held at once {peak[0]}; worker log in {logs}")
    print("| jobs/s | bound (budget / mean latency) | ratio (goal >= 0.85) | calls per job (goal <= 1.2) "
          "| 429 answers | dead letters | failed jobs |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {rate:.2f} | {bound:.2f} | {rate / bound:.2f} | {len(fake.requests) / len(events):.2f} "
          f"| {rate_limited} | {dead_letters} | {failed} |")


if __name__ == "__main__":
    run(main)

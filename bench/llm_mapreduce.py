"""A 100-page document through the summarizer's openai backend: map-reduce over chunks against the
repo's fake OpenAI-compatible server (on 127.0.0.1), every call answered after `--latency` seconds.

Figures: LLM calls, prompt and completion tokens (as the fake counts them: one a word, and reported
in `usage`), characters sent, wall time; beside them, measured in the same run, the same figures
for one call with the document cut to one chunk (CONVEYOR_OPENAI_MAX_INPUT_CHARS, what the backend
sent before it summarized whole documents), and the ratios.

    python bench/llm_mapreduce.py [--chars 300000] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm import Received, Reply, serving  # noqa: E402
from stages import run  # noqa: E402

from documents import english_text  # noqa: E402
from conveyor.document import Block, Document  # noqa: E402
from conveyor.settings import Settings  # noqa: E402
from conveyor.summarizer.backends.openai_backend import OpenAIBackend  # noqa: E402
from conveyor.summarizer.text import cut_at_word  # noqa: E402

SENTENCES = 3


def hundred_pages(chars: int) -> Document:
    """Paragraphs of ten distinct sentences (each seed its own) until there are `chars` characters."""
    paragraphs: list[str] = []
    while sum(map(len, paragraphs)) < chars:
        paragraphs.append(english_text(seed=len(paragraphs), sentences=10))
    return Document.of(Block("prose", paragraph) for paragraph in paragraphs)


async def measure(settings: Settings, document: Document, sent: list[int]) -> dict[str, float]:
    """One summary by a fresh backend (nothing cached): its meta's figures and its wall time."""
    backend = OpenAIBackend(settings)
    already = len(sent)
    try:
        started = time.perf_counter()
        summary = await backend.summarize(document, sentences=SENTENCES)
        wall = time.perf_counter() - started
    finally:
        await backend.close()
    meta = summary.meta
    return {"calls": meta["llm_calls"], "chunks": meta["chunks"], "prompt tokens": meta["prompt_tokens"],
            "completion tokens": meta["completion_tokens"], "characters sent": sum(sent[already:]), "wall (s)": wall}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=300_000, help="document size (default 300,000: ~100 pages)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the fake takes per call (default 1)")
    args = parser.parse_args()
    document = hundred_pages(args.chars)
    sent: list[int] = []  # characters of each request's user message, as the server received them

    def answer(received: Received) -> Reply:
        sent.append(len(received.body["messages"][-1]["content"]))
        return Reply.slow(args.latency)

    with serving(answer) as fake:
        settings = Settings(summarizer_backend="openai", openai_base_url=fake.url, openai_api_key="bench",
                            openai_timeout_seconds=60)
        cut, _ = cut_at_word(document.text, settings.openai_max_input_chars)
        baseline = await measure(settings, Document.from_text(cut), sent)
        whole = await measure(settings, document, sent)

    print(f"document: {len(document.text):,} characters in {len(document.blocks)} blocks; chunks of at most "
          f"{settings.openai_max_input_chars:,} characters, {settings.openai_map_concurrency} chunk calls at once, "
          f"{args.latency:g} s a call")
    print("| figure | one call, document cut to one chunk | whole document, map-reduce | ratio |")
    print("|---|---|---|---|")
    for figure in whole:
        ratio = whole[figure] / baseline[figure] if baseline[figure] else float("nan")
        shown = [f"{value:.2f}" if figure == "wall (s)" else f"{value:,.0f}"
                 for value in (baseline[figure], whole[figure])]
        print(f"| {figure} | {' | '.join(shown)} | {ratio:.2f} |")


if __name__ == "__main__":
    run(main)

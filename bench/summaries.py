"""TextRank summaries per second on the summary quality corpus (tests/data/debian-corpus.txt).

Conveyor: the extractor's blocks, then TextRank over the prose sentences only. Baseline, in the
same run: the text as plain readers give it (trafilatura's text, pypdf's page text, the decoded
bytes) and TextRank over every sentence, which is what summaries were made of before documents
had structure. Both rank in this process, one core, in chunks of 400 sentences as the backend
does. Figures: summaries/s and the share of summary sentences that are prose.

    python bench/summaries.py --rounds 3
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pypdf  # noqa: E402
import trafilatura  # noqa: E402

from corpus import CorpusDocument, corpus  # noqa: E402
from conveyor.extractor.extract import extract_text  # noqa: E402
from conveyor.summarizer.backends.textrank import (  # noqa: E402
    PROSE_PER_SUMMARY_SENTENCE, prose_sentences, rank_sentences, split_sentences,
)
from conveyor.summarizer.prose import is_prose  # noqa: E402

CHUNK = 400
MOST = 5


def rank(sentences: list[str], count: int) -> list[str]:
    """TextRank in chunks of CHUNK sentences, then over the chunks' picks."""
    while len(sentences) > CHUNK:
        sentences = [chunk[i] for start in range(0, len(sentences), CHUNK)
                     for chunk in [sentences[start:start + CHUNK]] for i in rank_sentences(chunk, count)]
    return [sentences[i] for i in rank_sentences(sentences, count)]


def plain_text(document: CorpusDocument, data: bytes) -> str:
    if document.content_type == "application/pdf":
        return "\n\n".join(page.extract_text() or "" for page in pypdf.PdfReader(io.BytesIO(data)).pages)
    if document.content_type == "text/html":
        return trafilatura.extract(data.decode("utf-8", "replace")) or ""
    return data.decode("utf-8", "replace")


def baseline(documents: list[tuple[CorpusDocument, bytes]]) -> list[str]:
    picked: list[str] = []
    for document, data in documents:
        picked += rank(split_sentences(plain_text(document, data)), MOST)
    return picked


def conveyor(documents: list[tuple[CorpusDocument, bytes]]) -> list[str]:
    picked: list[str] = []
    for document, data in documents:
        extracted = extract_text(data, content_type=document.content_type, filename=document.name)
        prose, _ = prose_sentences([block.text for block in extracted.document.of_kind("prose")])
        picked += rank(prose, min(MOST, max(1, math.ceil(len(prose) / PROSE_PER_SUMMARY_SENTENCE))))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the corpus (best is shown)")
    args = parser.parse_args()
    documents = [(document, document.read()) for document in corpus()]
    rank(split_sentences("Warm the models up now. Then rank a sentence. And another one."), 1)
    results = {}
    for name, run in (("baseline", baseline), ("conveyor", conveyor)):
        best = math.inf
        for _ in range(args.rounds):
            started = time.perf_counter()
            picked = run(documents)
            best = min(best, time.perf_counter() - started)
        results[name] = (len(documents) / best, sum(map(is_prose, picked)) / len(picked))
    (base_rate, base_prose), (rate, prose) = results["baseline"], results["conveyor"]
    print(f"{len(documents)} documents, best of {args.rounds} passes, one process")
    print("| | summaries/s | prose share of summary sentences |\n|---|---|---|")
    print(f"| plain text, every sentence ranked (baseline) | {base_rate:.2f} | {base_prose:.1%} |")
    print(f"| blocks, prose sentences ranked (Conveyor) | {rate:.2f} | {prose:.1%} |")
    print(f"ratio: {rate / base_rate:.2f}")


if __name__ == "__main__":
    main()

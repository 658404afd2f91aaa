"""Summaries of real documents are made of prose: the extractor and TextRank on documentation that
Debian packages install (tests/data/debian-corpus.txt; scripts/test installs the packages).

The prose rule is written out here on its own, not imported, so that a change to the summarizer's
filter cannot loosen what this test demands.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import pytest

from corpus import DOC_ROOT, CorpusDocument, corpus, missing_packages
from conveyor.errors import PermanentError
from conveyor.extractor.extract import Extracted, extract_text
from conveyor.settings import Settings
from conveyor.summarizer.backends.textrank import TextRankBackend

PROSE_SHARE = 0.95
CODE_MARKERS = re.compile(r">>>|[{}`]|==|->|::|#include|</")


def is_prose(sentence: str) -> bool:
    """Starts with a capital or a digit, ends with terminal punctuation, has at least 6 words, is
    mostly letters and has no code markers."""
    stripped = sentence.lstrip("\"'([\u201c\u2018")
    letters = sum(ch.isalpha() for ch in sentence if not ch.isspace())
    visible = sum(1 for ch in sentence if not ch.isspace())
    return (bool(stripped) and (stripped[0].isupper() or stripped[0].isdigit())
            and re.search(r"[.!?][\"')\]\u201d\u2019]*$", sentence) is not None
            and len(sentence.split()) >= 6 and letters >= 0.6 * visible
            and CODE_MARKERS.search(sentence) is None)


def summarize_corpus(documents: list[CorpusDocument]) -> list[tuple[CorpusDocument, Extracted, list[str]]]:
    async def run() -> list[tuple[CorpusDocument, Extracted, list[str]]]:
        backend = TextRankBackend(Settings(textrank_processes=2))
        try:
            results = []
            for document in documents:
                extracted = extract_text(document.read(), content_type=document.content_type, filename=document.name)
                summary = await backend.summarize(extracted.document, sentences=5)
                results.append((document, extracted, summary.sentences))
            return results
        finally:
            await backend.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def summaries() -> list[tuple[CorpusDocument, Extracted, list[str]]]:
    missing = missing_packages()
    assert not missing, f"the corpus needs Debian packages that are not installed: {' '.join(missing)} (scripts/test installs them)"
    started = time.perf_counter()
    results = summarize_corpus(corpus())
    elapsed = time.perf_counter() - started
    sentences = [sentence for _, _, picked in results for sentence in picked]
    formats = Counter(extracted.kind for _, extracted, _ in results)
    print(f"\ncorpus: {len(results)} documents ({dict(formats)}), {len(sentences)} summary sentences, "
          f"{sum(map(is_prose, sentences)) / len(sentences):.1%} prose, {len(results) / elapsed:.1f} summaries/s")
    return results


def test_the_corpus_is_fifty_real_documents_in_four_formats(summaries) -> None:
    assert len(summaries) >= 50
    kinds = Counter(extracted.kind for _, extracted, _ in summaries)
    assert {"html", "pdf", "text", "markdown"} <= set(kinds), kinds


def test_every_summary_sentence_occurs_in_the_extracted_text_on_one_line(summaries) -> None:
    for document, extracted, sentences in summaries:
        assert sentences, f"{document.path}: empty summary"
        for sentence in sentences:
            assert sentence in extracted.text, f"{document.path}: {sentence!r} is not in the extracted text"
            # Hard-wrapped source lines are joined: no summary sentence keeps a line break.
            assert "\n" not in sentence, f"{document.path}: {sentence!r} spans a line break"


def test_at_least_95_percent_of_summary_sentences_are_prose(summaries) -> None:
    sentences = [(document.path, sentence) for document, _, picked in summaries for sentence in picked]
    failing = [f"{path}: {sentence[:120]!r}" for path, sentence in sentences if not is_prose(sentence)]
    assert len(failing) <= (1 - PROSE_SHARE) * len(sentences), "\n".join(failing)


def _summary_of(summaries, name: str) -> list[str]:
    return next(picked for document, _, picked in summaries if document.path.name == name)


def test_the_libffi_manual_page_summarizes_into_whole_sentences(summaries) -> None:
    picked = _summary_of(summaries, "The-Basics.html")
    assert all(is_prose(sentence) for sentence in picked), picked
    # The fragments the old reader produced from its hard-wrapped lines.
    assert not any(sentence.startswith(("it, as well", "describes the return")) for sentence in picked), picked


def test_a_doctest_heavy_page_summarizes_into_prose_not_code(summaries) -> None:
    source = next(document for document, _, _ in summaries if document.path.name == "entries.rst.gz")
    assert source.read().count(b">>> ") > 50
    picked = _summary_of(summaries, "entries.rst.gz")
    assert picked and all(is_prose(sentence) and ">>>" not in sentence for sentence in picked), picked


def test_a_page_of_links_without_prose_fails_with_its_reason() -> None:
    page = CorpusDocument("libffi8", DOC_ROOT / "libffi8/html/Using-libffi.html")
    with pytest.raises(PermanentError, match=r"no prose to summarize: it has no paragraphs of prose \(blocks: .*list item"):
        summarize_corpus([page])

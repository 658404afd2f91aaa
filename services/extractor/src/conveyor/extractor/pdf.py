"""PDF text layers to blocks: lines regrouped into the paragraphs the layout drew.

A PDF has no paragraphs, only positioned lines. A line ends its paragraph when it ends a sentence
well short of the page's usual line width, or when the next line starts a list item; a paragraph
cut by a page break continues on the next page. Running headers and footers (a line that repeats
at the top or bottom of most pages, page numbers) and table-of-contents leaders are dropped.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterator

from conveyor.document import Block
from conveyor.extractor.blocks import classify, is_bullet, looks_like_heading

_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                            "\ufb05": "st", "\ufb06": "st"})
_SENTENCE_END = re.compile(r"[.!?:][\"')\]\u201d\u2019]{0,3}$")
_PAGE_REFERENCE = re.compile(r"\s{0,4}[\divxlc]{1,6}$", re.I)
_PAGE_NUMBER = re.compile(r"^(?:page\s{1,3})?[\divxlc]{1,6}(?:\s{0,3}(?:/|of)\s{0,3}\d{1,6})?$", re.I)
_DIGITS = re.compile(r"\d{1,12}")
# A paragraph's last line is shorter than this share of the page's usual line length.
SHORT_LINE = 0.8
EDGE_LINES = 2  # lines at the top and at the bottom of a page that may be running headers


def pdf_blocks(pages: list[str]) -> list[Block]:
    page_lines = [[line.strip() for line in page.translate(_LIGATURES).split("\n")] for page in pages]
    running = _running_lines(page_lines)
    paragraphs: list[list[str]] = []
    for lines in page_lines:
        kept = [line for position, line in enumerate(lines)
                if line and not _is_furniture(line, position, len(lines), running)]
        first = True
        for paragraph in _paragraphs(kept):
            # A paragraph the page break cut continues the last one.
            if first and paragraphs and not _SENTENCE_END.search(paragraphs[-1][-1]) \
                    and not is_bullet(paragraph[0]) and paragraph[0][:1].islower():
                paragraphs[-1].extend(paragraph)
            else:
                paragraphs.append(paragraph)
            first = False
    return [block for paragraph in paragraphs for block in classify(paragraph)]


def _running_lines(pages: list[list[str]]) -> set[str]:
    """Lines (digits ignored) that open or close at least half the pages: headers and footers."""
    if len(pages) < 3:
        return set()
    counts: Counter[str] = Counter()
    for lines in pages:
        nonblank = [line for line in lines if line]
        edges = {_DIGITS.sub("#", line) for line in nonblank[:EDGE_LINES] + nonblank[-EDGE_LINES:]}
        counts.update(edges)
    return {line for line, count in counts.items() if count * 2 >= len(pages)}


def _is_furniture(line: str, position: int, count: int, running: set[str]) -> bool:
    at_edge = position < EDGE_LINES + 1 or position >= count - EDGE_LINES - 1
    if at_edge and (_PAGE_NUMBER.match(line) or _DIGITS.sub("#", line) in running):
        return True
    return _is_contents_entry(line)


def _is_contents_entry(line: str) -> bool:
    """A table-of-contents line: dot leaders, then a page number ("Introduction . . . . 1")."""
    page = _PAGE_REFERENCE.search(line)
    return page is not None and line[:page.start()][-12:].replace(" ", "").endswith("....")


def _paragraphs(lines: list[str]) -> Iterator[list[str]]:
    if not lines:
        return
    widths = [len(line) for line in lines if len(line) > 20]
    usual = statistics.median(widths) if widths else max(len(line) for line in lines)
    current: list[str] = []
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if current and is_bullet(line):
            yield current
            current = []
        current.append(line)
        ends_sentence_short = _SENTENCE_END.search(line) is not None and len(line) < SHORT_LINE * usual
        title = looks_like_heading(line) and len(line) < SHORT_LINE * usual and following[:1].isupper()
        if ends_sentence_short or title or not following:
            yield current
            current = []
    if current:
        yield current

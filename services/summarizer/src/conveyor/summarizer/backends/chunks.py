"""Cutting a long text into chunks that fit in one LLM call, at block boundaries where it can.

Blocks are packed in order, a blank line between two, into chunks of at most `limit` characters.
A block longer than a chunk is cut where a sentence ends in the second half of the piece, else at
the last space, else (a text with no space at all) at `limit`. No text is lost: only the
whitespace at a cut goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

SEPARATOR = "\n\n"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACE = re.compile(r"\s+")


def chunk_texts(texts: Iterable[str], limit: int) -> list[str]:
    """`texts` packed in order into as few chunks of at most `limit` characters as fit."""
    chunks: list[str] = []
    current: list[str] = []  # joined once full: many small blocks stay linear
    size = 0
    for piece in _pieces(texts, limit):
        if current and size + len(SEPARATOR) + len(piece) > limit:
            chunks.append(SEPARATOR.join(current))
            current, size = [], 0
        size += len(piece) + (len(SEPARATOR) if current else 0)
        current.append(piece)
    if current:
        chunks.append(SEPARATOR.join(current))
    return chunks


def _pieces(texts: Iterable[str], limit: int) -> Iterator[str]:
    for text in texts:
        yield from cut_to_fit(text, limit)


def cut_to_fit(text: str, limit: int) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters, cut at sentence ends or spaces."""
    rest = text.strip()
    while len(rest) > limit:
        end = _cut_at(rest, limit)
        yield rest[:end].rstrip()
        rest = rest[end:].lstrip()
    if rest:
        yield rest


def _cut_at(text: str, limit: int) -> int:
    """Where the first piece of `text` ends: after the last sentence that fits, when that keeps
    the piece at least half full; else at the last space that fits; else at `limit`."""
    window = text[:limit + 1]  # whitespace just past the limit is a fine place to cut too
    sentence_end = _last_start(_SENTENCE_END, window)
    if sentence_end >= limit // 2:
        return sentence_end
    space = _last_start(_SPACE, window)
    return space if space > 0 else limit


def _last_start(pattern: re.Pattern[str], window: str) -> int:
    """Where the last match of `pattern` in `window` starts (-1: none)."""
    last = -1
    for match in pattern.finditer(window):
        last = match.start()
    return last

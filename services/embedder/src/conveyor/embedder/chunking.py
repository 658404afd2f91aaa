"""A document cut into chunks for retrieval: whole blocks packed up to a size, cut at a sentence
or a word only when one block alone is longer.

Each chunk carries the heading of its section, so a chunk found by a search says where it comes
from; a heading starts a new chunk. Boilerplate (navigation, licence text) is not chunked: nobody
searches for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from conveyor.document import Document

# Where a long block may be cut: after a sentence end, else at a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    heading: str | None = None

    @property
    def embedded_text(self) -> str:
        """What the model reads: the section's heading, then the chunk."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


def chunk_document(document: Document, max_chars: int) -> list[Chunk]:
    """The document's chunks in reading order, none longer than `max_chars` (plus its heading)."""
    chunks: list[Chunk] = []
    heading: str | None = None
    parts: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal parts, size
        if parts:
            chunks.append(Chunk(len(chunks), "\n\n".join(parts), heading))
        parts, size = [], 0

    for block in document.blocks:
        if block.kind == "boilerplate":
            continue
        if block.kind == "heading":
            flush()
            heading = _cut(block.text, max_chars)[0]
            continue
        for piece in _pieces(block.text, max_chars):
            if parts and size + 2 + len(piece) > max_chars:
                flush()
            parts.append(piece)
            size += len(piece) + (2 if size else 0)
    flush()
    if not chunks and heading:  # a document of headings only: they are its text
        chunks.append(Chunk(0, heading))
    return chunks


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """`text` in pieces of at most `max_chars`: sentences packed together, a sentence longer than
    that cut at words."""
    if len(text) <= max_chars:
        yield text
        return
    piece = ""
    for sentence in _SENTENCE_END.split(text):
        for part in _cut(sentence, max_chars):
            if piece and len(piece) + 1 + len(part) > max_chars:
                yield piece
                piece = ""
            piece = f"{piece} {part}" if piece else part
    if piece:
        yield piece


def _cut(text: str, max_chars: int) -> list[str]:
    """`text` cut at spaces into parts of at most `max_chars` (a word longer than that is cut)."""
    parts: list[str] = []
    while len(text) > max_chars:
        space = text.rfind(" ", 0, max_chars + 1)
        at = space if space > max_chars // 2 else max_chars
        parts.append(text[:at].rstrip())
        text = text[at:].lstrip()
    if text:
        parts.append(text)
    return parts

"""A document as the extractor hands it on: blocks in reading order, each labelled with its kind.

The extractor decides what each block is (a paragraph of prose, a heading, a list item, a table
row, code, or boilerplate such as navigation and licence text); later stages choose what they use:
the summarizer ranks only prose, an LLM is sent everything but boilerplate. Inside a block, lines
are joined: a block's text holds no line break unless it is code or a table, where lines matter.

On the wire it is JSON, `{"blocks": [["prose", "text"], ...]}`, under `CONTENT_TYPE`. A plain text
payload (from a producer older than blocks) reads as one prose block per paragraph.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from conveyor.errors import PermanentError

BlockKind = Literal["prose", "heading", "list_item", "table", "code", "boilerplate"]
BLOCK_KINDS: frozenset[str] = frozenset(get_args(BlockKind))
CONTENT_TYPE = "application/vnd.conveyor.blocks+json"


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    blocks: tuple[Block, ...]

    @classmethod
    def of(cls, blocks: Iterable[Block]) -> Document:
        return cls(tuple(block for block in blocks if block.text))

    @property
    def text(self) -> str:
        """The whole text, blocks separated by a blank line."""
        return "\n\n".join(block.text for block in self.blocks)

    def of_kind(self, *kinds: BlockKind) -> list[Block]:
        return [block for block in self.blocks if block.kind in kinds]

    def counts(self) -> dict[str, int]:
        """Blocks per kind, for the job's meta."""
        counts: dict[str, int] = {}
        for block in self.blocks:
            counts[block.kind] = counts.get(block.kind, 0) + 1
        return counts

    def encode(self) -> bytes:
        return json.dumps({"blocks": [[block.kind, block.text] for block in self.blocks]},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, content_type: str | None) -> Document:
        """The document a payload carries: blocks, or plain text read as prose paragraphs."""
        if (content_type or "").split(";", 1)[0].strip().lower() != CONTENT_TYPE:
            return cls.from_text(data.decode("utf-8"))
        try:
            raw = json.loads(data)["blocks"]
            blocks = [Block(kind, text) for kind, text in raw
                      if kind in BLOCK_KINDS and isinstance(text, str)]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"malformed document payload: {exc}") from exc
        return cls.of(blocks)

    @classmethod
    def from_text(cls, text: str) -> Document:
        return cls.of(Block("prose", paragraph.strip()) for paragraph in text.split("\n\n"))

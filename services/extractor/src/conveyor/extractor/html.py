"""HTML to blocks: trafilatura finds the main text and its structure; lxml reads what it rejects.

trafilatura's XML output keeps each block's element (paragraph, heading, list item, table row,
code), so kinds come from the markup. Pages it finds no main text in (fragments, very short
pages) are read element by element by a streaming reader instead, navigation and scripts dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

from html.parser import HTMLParser

import lxml.etree
import trafilatura

from conveyor.document import Block, BlockKind
from conveyor.extractor.blocks import classify, join_lines, looks_like_boilerplate, paragraph_kind

_NON_CONTENT_TAGS = ("script", "style", "noscript", "template", "head", "svg", "iframe", "nav",
                     "form", "button")


def html_blocks(markup: str) -> tuple[list[Block], str]:
    """The page's blocks and which reader found them ("trafilatura" or "stream")."""
    # No `deduplicate`: trafilatura keeps that cache across calls, so a long-lived worker would
    # drop paragraphs it saw in earlier documents.
    xml = trafilatura.extract(markup, output_format="xml", include_comments=False, favor_precision=True,
                              include_tables=True)
    blocks = _trafilatura_blocks(xml) if xml else []
    if any(block.kind == "prose" for block in blocks):
        return blocks, "trafilatura"
    return _visible_blocks(markup), "stream"


def _trafilatura_blocks(xml: str) -> list[Block]:
    try:
        root = lxml.etree.fromstring(xml.encode("utf-8"), lxml.etree.XMLParser(huge_tree=True))
    except lxml.etree.XMLSyntaxError:
        return []
    main = root.find("main")
    return list(_xml_children(main if main is not None else root))


def _xml_children(parent: lxml.etree._Element) -> Iterator[Block]:
    for element in parent:
        tag = element.tag
        if tag == "head":
            yield Block("heading", _inline_text(element))
        elif tag == "list":
            for item in element.iter("item"):
                yield Block("list_item", _inline_text(item))
        elif tag == "table":
            for row in element.iter("row"):
                yield Block("table", " | ".join(_inline_text(cell) for cell in row.iter("cell") if _inline_text(cell)))
        elif tag == "code":
            yield Block("code", "".join(element.itertext()).strip("\n"))
        elif tag == "quote":  # trafilatura's reading of <blockquote>, and of many a <pre>
            yield from _xml_children(element) if len(element) else classify("".join(element.itertext()).split("\n"))
        elif tag in ("p", "div"):
            yield from _paragraph(_inline_text(element))


def _paragraph(text: str) -> Iterator[Block]:
    if text:
        yield Block(paragraph_kind(text), text)


def _inline_text(element: lxml.etree._Element) -> str:
    """An element's text with the source's line wraps joined."""
    return join_lines("".join(element.itertext()).split("\n"))


# --- Element-by-element reading ----------------------------------------------------------------

_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6", "title"})
_BLOCKS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "aside", "li", "dt", "dd",
                     "tr", "table", "ul", "ol", "dl", "blockquote", "pre", "figcaption", "body", "html",
                     "td", "th", "tbody", "thead", "center", "address", "details", "summary", *_HEADINGS})


class _BlockReader(HTMLParser):
    """A streaming reader: no tree, so no depth limit (lxml drops what lies deeper than libxml2's
    limit, and hostile pages nest deeper), and time linear in the markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._pending: list[str] = []
        self._kind: BlockKind = "prose"
        self._skipping: list[str] = []  # open non-content elements (script, nav...)
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping or tag in _NON_CONTENT_TAGS:
            if tag in _NON_CONTENT_TAGS:
                self._skipping.append(tag)
            return
        if tag in _BLOCKS:
            self._flush()
            self._kind = "code" if tag == "pre" else _kind_of(tag)
            self._in_pre = tag == "pre"
        elif tag == "br":  # a forced line break ends the line's block, not its element
            if self._in_pre:
                self._pending.append("\n")
            else:
                self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
            return
        if tag in _BLOCKS:
            self._flush()
            self._kind, self._in_pre = "prose", False

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._pending.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        raw, kind = "".join(self._pending), self._kind
        self._pending.clear()
        if kind == "code":
            if raw.strip():
                self.blocks.append(Block("code", raw.strip("\n")))
            return
        text = join_lines(raw.split("\n"))
        if not text:
            return
        if kind == "prose":
            kind = paragraph_kind(text)
        elif looks_like_boilerplate(text):
            kind = "boilerplate"
        self.blocks.append(Block(kind, text))


def _visible_blocks(markup: str) -> list[Block]:
    reader = _BlockReader()
    reader.feed(markup)
    reader.close()
    return reader.blocks


def _kind_of(tag: str) -> BlockKind:
    if tag in _HEADINGS:
        return "heading"
    if tag == "li":
        return "list_item"
    if tag in ("tr", "td", "th"):
        return "table"
    return "prose"

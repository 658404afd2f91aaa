"""Markdown and reStructuredText sources to blocks: their markup says what each block is.

A line-by-line reader for each, covering what documentation sources use (headings, fenced and
indented code, literal and doctest blocks, directives, lists, tables, block quotes) and removing
inline markup so that prose reads as prose. Patterns are anchored and bounded: they see untrusted
text (tests/test_regex_safety.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from conveyor.document import Block
from conveyor.extractor.blocks import (
    is_bullet, join_lines, list_items, looks_like_table,
)

# --- Inline markup -----------------------------------------------------------------------------

# Bracketed text excludes brackets: a run of "[" then fails at once instead of rescanning.
_MD_IMAGE = re.compile(r"!\[[^\[\]\n]{0,300}\]\([^()\n]{0,1000}\)")
_MD_LINK = re.compile(r"\[([^\[\]\n]{1,300})\](?:\([^()\n]{0,1000}\)|\[[^\[\]\n]{0,100}\])")
_MD_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)([^*_\n]{1,500}?)(?<=\S)\1|(?<![\w*])([*_])(?=\S)([^*_\n]{1,500}?)(?<=\S)\3(?![\w*])")
# A comment holds no `<`: each `<!--` then scans to the next `<` at most, not 2,000 characters
# (100 KB of `<!--` took most of a second).
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>\n]{0,500}>|<!--[^<\n]{0,2000}?-->")
_AUTOLINK = re.compile(r"<((?:https?|mailto|ftp):[^<>\s]{1,2000})>")
_CODE_SPAN = re.compile(r"``?([^`\n]{1,500}?)``?")
_RST_ROLE = re.compile(r":[\w.+-]{1,40}:`([^`\n]{1,500}?)`")
_RST_LINK = re.compile(r"`([^`<\n]{1,500}?)\s*<[^>\n]{1,2000}>`__?")
_RST_REFERENCE = re.compile(r"`([^`\n]{1,500})`__?|\b(\w{1,100})__?(?!\w)|\|([\w -]{1,100})\|")
_RST_EMPHASIS = re.compile(r"\*\*([^*\n]{1,500}?)\*\*|(?<![\w*])\*([^*\s][^*\n]{0,500}?)\*(?![\w*])")


def _first_group(match: re.Match[str]) -> str:
    return next((group for group in match.groups() if group is not None), "")


def clean_markdown_inline(text: str) -> str:
    text = _MD_IMAGE.sub("", text)
    text = _MD_LINK.sub(_first_group, text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    text = _CODE_SPAN.sub(r"\1", text)
    text = _MD_EMPHASIS.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(4), text)
    return text.replace("\\", "")


def clean_rst_inline(text: str) -> str:
    text = _RST_ROLE.sub(lambda m: _RST_LINK.sub(r"\1", f"`{m.group(1)}`_") if "<" in m.group(1) else m.group(1), text)
    text = _RST_LINK.sub(r"\1", text)
    text = text.replace("``", "\x00")
    text = re.sub(r"\x00([^\x00\n]{1,500}?)\x00", r"\1", text).replace("\x00", "``")
    text = _RST_REFERENCE.sub(_first_group, text)
    return _RST_EMPHASIS.sub(_first_group, text)


# --- Markdown ----------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:\s+|$)")
_SETEXT = re.compile(r"^ {0,3}(?:=+|-+)\s*$")
_RULE = re.compile(r"^ {0,3}(?:(?:\*\s*){3,}|(?:-\s*){3,}|(?:_\s*){3,})$")
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]\n]{1,500}\]:\s")
_QUOTE = re.compile(r"^ {0,3}> ?")


def markdown_blocks(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks: list[Block] = []
    paragraph: list[str] = []
    index = 0

    def flush() -> None:
        if paragraph:
            blocks.extend(_markdown_paragraph(paragraph))
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence:
            flush()
            end = index + 1
            while end < len(lines) and not lines[end].lstrip().startswith(fence.group(1)):
                end += 1
            blocks.append(Block("code", "\n".join(lines[index + 1:end]).strip("\n")))
            index = end + 1
            continue
        if not line.strip():
            flush()
        elif _ATX.match(line):
            flush()
            blocks.append(Block("heading", clean_markdown_inline(_ATX.sub("", line).rstrip("# ").strip())))
        elif paragraph and _SETEXT.match(line) and not is_bullet(paragraph[0]):
            blocks.append(Block("heading", clean_markdown_inline(join_lines(paragraph))))
            paragraph.clear()
        elif _RULE.match(line) or _LINK_DEFINITION.match(line):
            flush()
        elif not paragraph and line.startswith(("    ", "\t")):
            end = index
            while end < len(lines) and (lines[end].startswith(("    ", "\t")) or not lines[end].strip()):
                end += 1
            blocks.append(Block("code", "\n".join(lines[index:end]).strip("\n")))
            index = end
            continue
        else:
            paragraph.append(_QUOTE.sub("", line))
        index += 1
    flush()
    return [block for block in blocks if block.text.strip()]


def _markdown_paragraph(lines: list[str]) -> Iterator[Block]:
    if looks_like_table(lines) and all("|" in line for line in lines):
        rows = [clean_markdown_inline(line.strip().strip("|").replace("|", " | ")) for line in lines
                if not re.match(r"^[\s|:-]{3,}$", line)]
        yield Block("table", "\n".join(" ".join(row.split()) for row in rows))
        return
    yield from list_items(lines, clean_markdown_inline)


# --- reStructuredText --------------------------------------------------------------------------

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>:._])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]{1,60})::(.*)$")
_COMMENT = re.compile(r"^\s*\.\.(?:\s|$)")
_FIELD = re.compile(r"^:[\w ./-]{1,60}:(?:\s|$)")
_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode", "literalinclude", "doctest", "testcode",
                              "testoutput", "highlight", "parsed-literal", "productionlist"})
_PROSE_DIRECTIVES = frozenset({"note", "warning", "tip", "important", "hint", "caution", "attention",
                               "danger", "error", "seealso", "admonition", "topic", "sidebar",
                               "versionadded", "versionchanged", "deprecated", "rubric", "epigraph"})


def rst_blocks(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks: list[Block] = []
    paragraph: list[str] = []
    literal_next = False
    index = 0

    def flush() -> None:
        nonlocal literal_next
        if paragraph:
            if paragraph[-1].rstrip().endswith("::"):
                literal_next = True
                last = paragraph[-1].rstrip()[:-2]
                paragraph[-1] = last + (":" if last and not last.endswith(" ") else "")
            blocks.extend(list_items(list(paragraph), clean_rst_inline))
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped:
            flush()
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        if literal_next and indent > 0 and not paragraph:
            end = _indented_end(lines, index, indent)
            blocks.append(Block("code", "\n".join(lines[index:end]).strip("\n")))
            literal_next, index = False, end
            continue
        literal_next = False
        if _ADORNMENT.match(stripped) and not paragraph and index + 2 < len(lines) \
                and lines[index + 2].strip() == stripped:
            flush()  # an overlined title: rule, title, rule
            blocks.append(Block("heading", clean_rst_inline(lines[index + 1].strip())))
            index += 3
            continue
        if _ADORNMENT.match(stripped) and len(paragraph) == 1 and len(stripped) >= len(paragraph[0].strip()) - 2:
            blocks.append(Block("heading", clean_rst_inline(paragraph[0].strip())))
            paragraph.clear()
            index += 1
            continue
        directive = _DIRECTIVE.match(line)
        if directive and not paragraph:
            index = _directive(lines, index, directive.group(1).lower(), directive.group(2), blocks)
            continue
        if (_COMMENT.match(line) or _FIELD.match(stripped)) and not paragraph:
            index = _indented_end(lines, index + 1, indent + 1)
            continue
        if stripped.startswith(">>>") and not paragraph:
            end = index
            while end < len(lines) and lines[end].strip():
                end += 1
            blocks.append(Block("code", "\n".join(lines[index:end])))
            index = end
            continue
        if stripped.startswith("+-") and _ADORNMENT.match(stripped.replace("+", "-")) is None and not paragraph:
            end = index
            while end < len(lines) and lines[end].strip()[:1] in ("+", "|"):
                end += 1
            rows = [clean_rst_inline(row.strip().strip("|").replace("|", " | ")) for row in lines[index:end]
                    if not row.strip().startswith("+")]
            blocks.append(Block("table", "\n".join(" ".join(row.split()) for row in rows)))
            index = end
            continue
        paragraph.append(line)
        index += 1
    flush()
    return [block for block in blocks if block.text.strip()]


def _indented_end(lines: list[str], start: int, indent: int) -> int:
    """The first line at or after `start` that is indented less than `indent` (blank lines inside)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent):
        end += 1
    return end


def _directive(lines: list[str], index: int, name: str, argument: str, blocks: list[Block]) -> int:
    """Read the directive at `index` into `blocks`; return the index after its body."""
    start = index + 1
    end = _indented_end(lines, start, 1)
    body = [line for line in lines[start:end]]
    # Options (":linenos:") open a directive's body; the content follows them.
    while body and _FIELD.match(body[0].strip()):
        body.pop(0)
    if name in _CODE_DIRECTIVES:
        content = "\n".join(body).strip("\n")
        if content:
            blocks.append(Block("code", content))
    elif name in _PROSE_DIRECTIVES:
        text = "\n".join(([argument.strip()] if argument.strip() else []) + [line.strip() for line in body])
        blocks.extend(rst_blocks(text))
    # Everything else (toctree, image, include, automodule, ...) is structure, not text.
    return end

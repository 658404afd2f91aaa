"""Turning lines into labelled blocks: joining hard-wrapped lines and telling prose from the rest.

Every format's reader ends here. A reader that knows a block's kind from the markup (an HTML
heading, a Markdown fence) says so; paragraphs whose kind only their text can tell go through
`classify`. Every pattern sees untrusted text: no nested quantifiers, and each is anchored or
bounded (tests/test_regex_safety.py feeds each 100 KB).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from conveyor.document import Block, BlockKind

# "exam-" + "ple" is one word split by the line end; "long-" + "term" keeps its hyphen only when
# the next part is capitalised or a digit, which a hyphenated compound's second half rarely is.
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-$")
_BULLET = re.compile(r"^(?:[-*+\u2022\u2023\u25e6\u2043\u2219]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s+(?=\S)")
_TABLE_RULE = re.compile(r"^[+|]?[-=+|: ]{3,}[+|]?$")
# Signs of program text rather than prose, when most lines of a paragraph carry one.
_CODE_LINE = re.compile(
    r"^\s*(?:>>> |\$ |# ?include\b|#!|[{}]\s*$|(?:def|class|import|from|return|if|for|while|int|void|char|"
    r"static|struct|const|var|let|function)\b[^.!?]{0,200}[:;{(]\s*$)"
    r"|[;{}]\s*$|^\s*(?://|/\*|\*/)|==|!=|->|=>|&&|\|\||\w\(\S{0,40}\)\s*;"
)
_TERMINAL = re.compile(r"[.!?:;][\"')\]\u201d\u2019]{0,3}$")
# Notices that say whose text it is and under which licence, not what the document is about.
_LICENCE_NOTICE = re.compile(
    r"^(?:copyright\b|\(c\)|\u00a9|all rights reserved|permission is (?:hereby )?granted|"
    r"this (?:program|library|file|document|manual|software) is free (?:software|documentation)|"
    r"(?:this|the) software is provided\b|licensed under the\b)",
    re.I,
)
# Page navigation ("Next: Types, Previous: The Basics, Up: Using libffi"): short lines only.
_NAVIGATION = re.compile(r"^(?:next|previous|prev|up|contents|index|home|top)\s{0,3}[:|\]]", re.I)
NAVIGATION_MAX_CHARS = 300
HEADING_MAX_WORDS = 14


def join_lines(lines: Iterable[str]) -> str:
    """One line from a hard-wrapped paragraph: lines joined by a space, a word hyphenated across
    a line end joined again."""
    joined = ""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if not joined:
            joined = line
        elif _HYPHEN_BREAK.search(joined) and line[:1].islower():
            joined = joined[:-1] + line
        else:
            joined = f"{joined} {line}"
    return joined


def is_bullet(line: str) -> bool:
    return _BULLET.match(line.lstrip()) is not None


def strip_bullet(line: str) -> str:
    return _BULLET.sub("", line.lstrip(), count=1)


def looks_like_code(lines: list[str]) -> bool:
    """Most lines read as program text, or the paragraph is indented like a literal block."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        return False
    code = sum(1 for line in lines if _CODE_LINE.search(line))
    return code * 2 > len(lines)


def looks_like_table(lines: list[str]) -> bool:
    lines = [line for line in lines if line.strip()]
    return len(lines) >= 2 and (any(_TABLE_RULE.match(line.strip()) for line in lines)
                                or all(line.count("|") >= 2 for line in lines))


def looks_like_boilerplate(text: str) -> bool:
    if _LICENCE_NOTICE.match(text):
        return True
    return len(text) <= NAVIGATION_MAX_CHARS and _NAVIGATION.match(text.lstrip("[")) is not None


def looks_like_heading(text: str) -> bool:
    """Short, no sentence end: a title, not a sentence."""
    words = text.split()
    return 0 < len(words) <= HEADING_MAX_WORDS and not _TERMINAL.search(text) and len(text) <= 120


def classify(lines: list[str]) -> Iterator[Block]:
    """Blocks of one paragraph of unmarked text (plain text, a PDF page's paragraph)."""
    lines = [line.rstrip() for line in lines if line.strip()]
    if not lines:
        return
    if looks_like_table(lines):
        yield Block("table", "\n".join(line.strip() for line in lines if not _TABLE_RULE.match(line.strip())))
        return
    if looks_like_code(lines):
        yield Block("code", "\n".join(lines))
        return
    if any(is_bullet(line) for line in lines):
        yield from list_items(lines)
        return
    text = join_lines(lines)
    yield Block(paragraph_kind(text), text)


def paragraph_kind(text: str) -> BlockKind:
    """The kind of a joined paragraph whose markup said nothing about it."""
    if looks_like_boilerplate(text):
        return "boilerplate"
    if looks_like_heading(text):
        return "heading"
    return "prose"


def list_items(lines: list[str], clean: Callable[[str], str] = str) -> Iterator[Block]:
    """Each bullet with its continuation lines is one item; text before the first bullet, or
    without bullets, is its own paragraph. `clean` removes a format's inline markup."""
    current: list[str] = []
    in_item = False

    def block() -> Block | None:
        text = " ".join(clean(join_lines(current)).split())
        if not text:
            return None
        return Block("list_item", text) if in_item else Block(paragraph_kind(text), text)

    for line in lines:
        if is_bullet(line):
            if current and (made := block()):
                yield made
            current, in_item = [strip_bullet(line)], True
        else:
            current.append(line)
    if current and (made := block()):
        yield made


def paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    """Runs of non-blank lines."""
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            yield current
            current = []
    if current:
        yield current


def text_blocks(text: str) -> list[Block]:
    """Blocks of plain text: paragraphs at blank lines, each classified."""
    return [block for paragraph in paragraphs(text.split("\n")) for block in _indented_split(paragraph)]


def _indented_split(lines: list[str]) -> Iterator[Block]:
    """A paragraph whose lines change indentation mid-way (prose, then an indented example) is
    two blocks; an indented run of four or more spaces under prose is a literal block."""
    runs: list[tuple[bool, list[str]]] = []
    base = min(_indent(line) for line in lines)
    for line in lines:
        deep = _indent(line) >= base + 4
        if runs and runs[-1][0] == deep:
            runs[-1][1].append(line)
        else:
            runs.append((deep, [line]))
    if len(runs) == 1:
        yield from classify(lines)
        return
    for deep, run in runs:
        if deep and not any(is_bullet(line) for line in run):
            yield Block("code", "\n".join(line.rstrip() for line in run))
        else:
            yield from classify(run)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))

"""What counts as a sentence of prose, the only kind an extractive summary is made of.

The rule, as the README states it: a sentence starts with a capital letter or a digit (after an
opening quote or bracket), ends with terminal punctuation (. ! ?, then closing quotes or brackets),
has at least `MIN_WORDS` words and at most `MAX_CHARS` characters, is mostly letters, holds no
line break, and carries none of the markers of program text (`>>>`, braces, `==`, `->`, `::`,
backticks, `#include`, closing tags, calls and C declarations, rules of `~`, `=`, `-` or `_`). Headings, list stubs, code lines and runaway "sentences"
of a text without sentence ends all fail it.
"""

from __future__ import annotations

import re

MIN_WORDS = 6
MAX_CHARS = 600
MIN_LETTER_SHARE = 0.7

_OPENING = "\"'([\u201c\u2018"
_END = re.compile(r"[.!?][\"')\]\u201d\u2019]{0,3}$")
# Program text: prompts, braces, operators, calls and C declarations ("f( int *p"), rules.
_CODE_MARKERS = re.compile(
    r">>>|[{}`]|==|!=|->|=>|::|#include|</|&&|\|\||^\$ |\[(?:Function|Macro|Meta struct|Meta function|Variable|Data type|Constant|Type)\]|~{3}|={3}|-{4}|_{4}"
    r"|\w\((?:\)|\s|(?:const|struct|int|void|char|unsigned|size_t)\b)|\s\*{1,2}\w{1,60}\s?[,);]"
)


def is_prose(sentence: str) -> bool:
    if "\n" in sentence or len(sentence) > MAX_CHARS:
        return False
    first = sentence.lstrip(_OPENING)[:1]
    # A capital, a digit, or a letter of a script without case.
    if not (first.isdigit() or (first.isalpha() and not first.islower())) or not _END.search(sentence):
        return False
    if len(sentence.split()) < MIN_WORDS or _CODE_MARKERS.search(sentence):
        return False
    visible = [ch for ch in sentence if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) >= MIN_LETTER_SHARE * len(visible)

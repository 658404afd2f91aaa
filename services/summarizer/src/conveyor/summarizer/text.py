"""Cutting text to a size without splitting a word."""

from __future__ import annotations


def cut_at_word(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` characters, cut at a word boundary when one is near the end; and whether
    anything was cut."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ", max(0, limit - 200))
    return (cut[:space] if space > 0 else cut), True

"""The extractor keeps a document's structure: paragraphs joined from hard-wrapped lines, and
each block labelled with its kind, in every format."""

from __future__ import annotations

import pytest

from conveyor.document import Block, Document
from conveyor.errors import PermanentError
from conveyor.extractor.extract import extract_text
from test_extract import make_pdf


def blocks(data: str | bytes, **declared: str) -> list[tuple[str, str]]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return [(block.kind, block.text) for block in extract_text(raw, **declared).document.blocks]


def test_plain_text_joins_wrapped_lines_and_labels_lists_and_code() -> None:
    text = ("Installing the tool\n\n"
            "The installer copies the files into place and then checks\n"
            "that every one of them arrived in one piece, re-\nporting any that did not.\n\n"
            "- the first item of the list\n  continues here\n- the second item\n\n"
            "Run it like this:\n\n"
            "    $ ./install --prefix=/usr\n    $ make check\n")
    assert blocks(text) == [
        ("heading", "Installing the tool"),
        ("prose", "The installer copies the files into place and then checks that every one of them "
                  "arrived in one piece, reporting any that did not."),
        ("list_item", "the first item of the list continues here"),
        ("list_item", "the second item"),
        ("prose", "Run it like this:"),
        ("code", "    $ ./install --prefix=/usr\n    $ make check"),
    ]


def test_html_paragraph_wrapped_in_the_source_is_one_paragraph() -> None:
    page = ("<html><body><article><h1>Calling functions</h1>"
            "<p>You must first create an object that\nmatches the signature of the function you\n"
            "wish to call, because it is common to make\nmultiple calls with it.</p>"
            "<p>The object is prepared once and reused for every call that has the same signature.</p>"
            "<pre>ffi_prep_cif(&amp;cif, FFI_DEFAULT_ABI, 1, &amp;ffi_type_sint, args);\nffi_call(&amp;cif);</pre>"
            "<ul><li>first point</li><li>second point</li></ul></article></body></html>")
    found = blocks(page, content_type="text/html")
    assert ("prose", "You must first create an object that matches the signature of the function you "
                     "wish to call, because it is common to make multiple calls with it.") in found
    assert ("heading", "Calling functions") in found
    assert any(kind == "code" and "ffi_call(&cif);" in text for kind, text in found)
    assert ("list_item", "second point") in found


def test_deeply_nested_html_keeps_its_text() -> None:
    page = "<html><body>" + "<div>" * 5_000 + "<p>The text at the bottom of a very deep tree is still text.</p>" \
        + "</div>" * 5_000 + "</body></html>"
    assert ("prose", "The text at the bottom of a very deep tree is still text.") in blocks(page, content_type="text/html")


def test_markdown_headings_code_fences_tables_and_inline_markup() -> None:
    source = ("<p align=\"center\"><img src=\"logo.png\"></p>\n\n"
              "Project title\n=============\n\n"
              "The **library** compresses data quickly and is described in\n"
              "[the manual](https://example.org/manual), with `zstd` as its command.\n\n"
              "```sh\nmake install\n```\n\n"
              "| level | speed |\n|---|---|\n| 1 | fast |\n\n"
              "## Building\n\n* with make\n* with cmake\n")
    assert blocks(source, content_type="text/markdown") == [
        ("heading", "Project title"),
        ("prose", "The library compresses data quickly and is described in the manual, with zstd as its command."),
        ("code", "make install"),
        ("table", "level | speed\n1 | fast"),
        ("heading", "Building"),
        ("list_item", "with make"),
        ("list_item", "with cmake"),
    ]


def test_restructuredtext_literal_doctest_and_directive_blocks() -> None:
    source = ("=====\nTitle\n=====\n\n"
              "Section\n-------\n\n"
              "The client fetches the :class:`Entry` from the service and caches it, as the\n"
              "`documentation <https://example.org>`_ explains::\n\n"
              "    client = Client()\n    client.fetch()\n\n"
              ">>> client.entries[0].name\n'first'\n\n"
              ".. note::\n   A note is prose like any other paragraph of the page.\n\n"
              ".. code-block:: python\n\n   print('code')\n\n"
              ".. toctree::\n   :maxdepth: 2\n\n   intro\n   usage\n\n"
              ".. a comment that is not shown\n")
    assert blocks(source, filename="guide.rst") == [
        ("heading", "Title"),
        ("heading", "Section"),
        ("prose", "The client fetches the Entry from the service and caches it, as the documentation explains:"),
        ("code", "    client = Client()\n    client.fetch()"),
        ("code", ">>> client.entries[0].name\n'first'"),
        ("prose", "A note is prose like any other paragraph of the page."),
        ("code", "   print('code')"),
    ]


def test_pdf_lines_become_paragraphs_with_hyphenation_joined_and_running_headers_dropped() -> None:
    header = "Example Manual, chapter one"

    def body(page: str) -> list[str]:
        return [f"On the {page} page the compressor reads its input in blocks of fixed size and writes",
                "each block as soon as it is done, so that memory use stays bounded while the",
                "output grows. Damaged blocks are detected by their checksums and re-",
                "ported with their position."]

    names = ["first", "second", "third"]
    pages = [[header, *body(name), f"Next, the {name} block size decides how much memory each run takes.", str(number)]
             for number, name in enumerate(names, start=1)]
    found = blocks(make_pdf(pages), content_type="application/pdf")
    for name in names:
        paragraph = (f"On the {name} page the compressor reads its input in blocks of fixed size and writes each block "
                     "as soon as it is done, so that memory use stays bounded while the output grows. Damaged "
                     "blocks are detected by their checksums and reported with their position.")
        assert ("prose", paragraph) in found, found
    assert not any(header in text or text in {"1", "2", "3"} for _, text in found), found


def test_text_quoting_the_pdf_magic_number_is_text() -> None:
    text = "A note about file formats: every PDF starts with %PDF-1.7 in its first bytes."
    assert extract_text(text.encode(), content_type="text/plain").kind == "text"
    with pytest.raises(PermanentError, match="PDF"):
        extract_text(b"junk before the header %PDF-1.4 and nothing more", content_type="application/pdf")


def test_formatted_manual_page_text_loses_its_terminal_formatting() -> None:
    data = b"\x1b[1mNAME\x1b[0m\n\nThe p\x08pa\x08ag\x08ge\x08er shows _\x08m_\x08a_\x08n pages one screen at a time.\n"
    assert blocks(data, content_type="text/plain") == [
        ("heading", "NAME"), ("prose", "The pager shows man pages one screen at a time.")]


def test_licence_notices_and_navigation_are_boilerplate() -> None:
    page = ("Next: Types, Previous: The Basics, Up: Using libffi\n\n"
            "Copyright (C) 2024 The Authors. Permission is granted to copy this manual.\n\n"
            "The library calls functions whose signatures are only known at run time.\n")
    assert [kind for kind, _ in blocks(page)] == ["boilerplate", "boilerplate", "prose"]


def test_document_payload_round_trips_and_plain_text_reads_as_prose() -> None:
    document = Document.of([Block("heading", "Title"), Block("code", "a = 1\nb = 2"), Block("prose", "Words here.")])
    assert Document.decode(document.encode(), "application/vnd.conveyor.blocks+json") == document
    assert Document.decode(b"One paragraph.\n\nAnother one.", "text/plain") == Document.of(
        [Block("prose", "One paragraph."), Block("prose", "Another one.")])
    with pytest.raises(PermanentError, match="malformed document payload"):
        Document.decode(b'{"blocks": 5}', "application/vnd.conveyor.blocks+json")

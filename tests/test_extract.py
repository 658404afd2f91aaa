"""Extraction from real documents generated here: HTML, PDF, DOCX and text in many charsets."""

from __future__ import annotations

import codecs
import gzip
import io
import random
import time
import zipfile

import docx
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from conveyor.errors import PermanentError
from conveyor.extractor.extract import extract_text, normalize_whitespace

ARTICLE = [
    "Researchers measured the sediment load of forty rivers across three continents over a decade.",
    "The study found that seasonal floods move most of the material in just a few days each year.",
    "Dams upstream trap a large share of the sediment, which starves deltas of the soil they need.",
    "The authors recommend opening sluice gates during floods so that sediment can pass downstream.",
]

PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Rivers carry more sediment</title>
<script>var tracking = "should never appear";</script></head>
<body>
<header><nav><ul>
  <li><a href="/">Home</a></li><li><a href="/products">Products catalogue</a></li>
  <li><a href="/about">About our company</a></li><li><a href="/contact">Contact sales</a></li>
</ul></nav></header>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
  <button>Accept all cookies</button></div>
<main><article><h1>Rivers carry more sediment than expected</h1>
{"".join(f"<p>{sentence}</p>" for sentence in ARTICLE)}
</article></main>
<footer><p>Copyright 2024 Example Media. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>"""


def make_pdf(pages: list[list[str]]) -> bytes:
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    for lines in pages:
        y = 800
        for line in lines:
            pdf.drawString(72, y, line)
            y -= 18
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_scanned_pdf() -> bytes:
    """A page with graphics only, like a scan: no text layer at all."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    pdf.rect(100, 100, 300, 400, fill=1)
    pdf.circle(300, 600, 50, fill=1)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def test_html_keeps_article_and_drops_navigation_and_cookie_banner() -> None:
    result = extract_text(PAGE.encode("utf-8"), content_type="text/html; charset=utf-8")

    assert result.kind == "html"
    for sentence in ARTICLE:
        assert sentence in result.text
    for boilerplate in ("Products catalogue", "About our company", "Accept all cookies", "Privacy policy",
                        "tracking"):
        assert boilerplate not in result.text
    assert result.meta["charset"] == "utf-8"
    assert result.meta["chars"] == len(result.text)


def test_html_is_sniffed_without_declared_type_and_decoded_by_meta_charset() -> None:
    page = PAGE.replace('charset="utf-8"', 'charset="windows-1251"').replace(
        ARTICLE[0], "Исследователи измерили сток наносов сорока рек на трёх континентах."
    )

    result = extract_text(page.encode("cp1251"), content_type="application/octet-stream")

    assert result.kind == "html"
    assert "Исследователи измерили сток наносов сорока рек на трёх континентах." in result.text
    assert result.meta["charset"] == "windows-1251"


def test_html_fragment_falls_back_to_visible_text_with_paragraph_breaks() -> None:
    fragment = b"<p>First short note.</p><p>Second short note.</p><script>hidden()</script>"

    result = extract_text(fragment)

    assert result.kind == "html"
    assert result.text == "First short note.\n\nSecond short note."


def test_pdf_text_layer_is_extracted_page_by_page() -> None:
    data = make_pdf([ARTICLE[:2], ARTICLE[2:]])

    result = extract_text(data, content_type="application/octet-stream", filename="upload.bin")

    assert result.kind == "pdf"
    assert result.meta["pages"] == 2
    assert result.meta["pages_with_text"] == 2
    for sentence in ARTICLE:
        assert sentence in result.text
    # Pages are separate paragraphs.
    assert result.text.index("\n\n") > result.text.index(ARTICLE[1])


def test_pdf_without_text_layer_is_reported_as_scanned() -> None:
    with pytest.raises(PermanentError, match=r"no text layer.*scanned"):
        extract_text(make_scanned_pdf(), content_type="application/pdf")


def test_corrupt_pdf_is_permanent() -> None:
    truncated = make_pdf([ARTICLE])[:300]

    with pytest.raises(PermanentError, match="corrupt or unreadable PDF"):
        extract_text(truncated, content_type="application/pdf")


def test_declared_pdf_that_is_not_a_pdf_is_permanent() -> None:
    with pytest.raises(PermanentError, match="PDF"):
        extract_text(b"\x00\x01\x02 not really a pdf", content_type="application/pdf", filename="a.pdf")


def test_docx_paragraphs_and_table_cells_in_order() -> None:
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph(ARTICLE[0])
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Region", "Revenue"
    table.cell(1, 0).text, table.cell(1, 1).text = "North", "12 million"
    document.add_paragraph(ARTICLE[1])
    buffer = io.BytesIO()
    document.save(buffer)

    result = extract_text(buffer.getvalue(), filename="report.docx")

    assert result.kind == "docx"
    assert result.text.split("\n\n") == [
        "Quarterly report", ARTICLE[0], "Region | Revenue", "North | 12 million", ARTICLE[1]
    ]
    assert result.meta["tables"] == 1


def test_docx_merged_cells_appear_once() -> None:
    document = docx.Document()
    table = document.add_table(rows=1, cols=3)
    merged = table.cell(0, 0).merge(table.cell(0, 1))
    merged.text = "Merged heading"
    table.cell(0, 2).text = "Last"
    buffer = io.BytesIO()
    document.save(buffer)

    assert extract_text(buffer.getvalue()).text == "Merged heading | Last"


def test_corrupt_docx_is_permanent() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<not-xml")

    with pytest.raises(PermanentError, match="corrupt or unreadable DOCX"):
        extract_text(buffer.getvalue())


def test_zip_that_is_not_docx_is_permanent() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")

    with pytest.raises(PermanentError, match="ZIP archive that is not a DOCX"):
        extract_text(buffer.getvalue(), filename="notes.zip")


SAMPLES = {
    "cp1251": "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных "
              "губерний даст мощный толчок подъёму сельского хозяйства.",
    "koi8-r": "В чащах юга жил бы цитрус? Да, но фальшивый экземпляр! Эх, чужак, общий съём цен шляп "
              "(юфть) - вдрызг!",
    "shift_jis": "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
                 "ニャーニャー泣いていた事だけは記憶している。",
    "utf-16": "Grüße aus Köln. Ça va très bien, merci. Съешь ещё булок. 名前はまだ無い。",
    "latin-1": "Les élèves étudient à l'école depuis le début de l'année. Ça coûte très cher, n'est-ce "
               "pas ? Le garçon a mangé une crème brûlée au café près de la forêt.",
    "cp1252": "Smart “quotes” and an em dash — plus the euro sign € in a sentence. Café déjà vu, "
              "naïve façade, résumé.",
    "utf-8": "Plain UTF-8 with accents: café, Straße, Ελληνικά, русский, 日本語.",
    "utf-8-sig": "UTF-8 with a byte order mark: café and Straße.",
}


@pytest.mark.parametrize("charset", sorted(SAMPLES))
def test_text_in_common_charsets_decodes_exactly(charset: str) -> None:
    original = SAMPLES[charset]

    result = extract_text(original.encode(charset), filename="notes.txt")

    assert (result.text, result.kind, result.meta["chars"]) == (original, "text", len(original))
    assert "charset" in result.meta


def test_declared_charset_is_used_when_it_decodes() -> None:
    # Too short for reliable detection; the declaration settles it.
    data = "Привет, мир!".encode("koi8-r")

    result = extract_text(data, content_type="text/plain; charset=KOI8-R")

    assert result.text == "Привет, мир!"
    assert result.meta["charset"] == "koi8-r"


def test_png_is_rejected_by_name() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))

    with pytest.raises(PermanentError, match="unsupported document type: PNG image"):
        extract_text(png, content_type="text/plain", filename="photo.txt")


def test_other_binary_formats_are_named() -> None:
    with pytest.raises(PermanentError, match="unsupported document type: gzip archive"):
        extract_text(gzip.compress(b"hello " * 100), filename="notes.txt")


def test_text_that_starts_like_a_short_magic_number_is_still_text() -> None:
    assert extract_text(b"BMW sales rose in March.").text == "BMW sales rose in March."


def test_byte_order_mark_outranks_a_wrong_declared_charset() -> None:
    data = codecs.BOM_UTF8 + "Grüße aus Köln.".encode("utf-8")

    assert extract_text(data, content_type="text/plain; charset=koi8-r").text == "Grüße aus Köln."


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_are_rejected_as_binary(seed: int) -> None:
    noise = random.Random(seed).randbytes(4096)

    with pytest.raises(PermanentError, match="unsupported binary content.*not a PDF, DOCX, HTML or text"):
        extract_text(noise, content_type="application/octet-stream")


@pytest.mark.parametrize("data", [b"", b"   \n\t  \r\n"])
def test_empty_documents_are_permanent(data: bytes) -> None:
    with pytest.raises(PermanentError, match="empty document|contains no text"):
        extract_text(data)


def test_whitespace_is_normalised_but_paragraphs_kept() -> None:
    raw = "  Title\u00a0\u00a0here \r\n\r\n\r\n\r\nFirst   line\t\twraps\r\nonto the next.\x0cNext page. "

    assert normalize_whitespace(raw) == "Title here\n\nFirst line wraps\nonto the next.\n\nNext page."
    # A paragraph's hard-wrapped lines are joined; each paragraph is a block.
    assert extract_text(raw.encode("utf-8")).text == "Title here\n\nFirst line wraps onto the next.\n\nNext page."


def test_unclosed_and_chained_comments_sniff_in_linear_time() -> None:
    """A 281-byte run of HTML comments once hung format sniffing (exponential backtracking)."""
    started = time.perf_counter()
    for document in (b"<!---->" * 40 + b"plain text after comments", b"<!--" * 25_000, b"<!---->" * 14_000 + b"<p>x"):
        extracted = extract_text(document, content_type=None, filename=None)
        assert extracted.text
    assert time.perf_counter() - started < 2.0

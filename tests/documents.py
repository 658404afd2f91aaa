"""Test documents with known sentences, so summaries can be checked against their source."""

from __future__ import annotations

import io

TOPICS = ["rivers", "mountains", "forests", "deserts", "oceans", "cities", "glaciers", "islands"]


def english_text(seed: int = 0, sentences: int = 24) -> str:
    """Distinct, well-formed English sentences (a different document per seed)."""
    lines = []
    for i in range(sentences):
        topic = TOPICS[(seed + i) % len(TOPICS)]
        lines.append(
            f"Document {seed} observes that the {topic} of region {i} changed over {i + seed % 7 + 2} decades "
            f"while scientists measured the {topic} and reported steady results in study {i}."
        )
    return " ".join(lines)


def _draw_sentences(pdf, text: str) -> None:  # type: ignore[no-untyped-def]
    """One sentence per line, as a text layer pypdf can read back."""
    y = 800
    for sentence in text.split(". "):
        pdf.drawString(40, y, sentence.strip().rstrip(".") + ".")
        y -= 16
        if y < 60:
            pdf.showPage()
            y = 800


def pdf_bytes(text: str) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    _draw_sentences(pdf, text)
    pdf.save()
    return buffer.getvalue()


def large_pdf_bytes(text: str, *, megabytes: int) -> bytes:
    """A PDF of about `megabytes` MB: an incompressible noise image plus a text layer of `text`."""
    import os

    from PIL import Image
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    _draw_sentences(pdf, text)
    pdf.showPage()
    pdf.drawImage(ImageReader(noise), 0, 0, width=500, height=500)
    pdf.save()
    return buffer.getvalue()

"""Document bytes -> labelled blocks: HTML, PDF, DOCX, Markdown, reStructuredText and plain text
in any common charset.

Pure, synchronous and CPU-bound: callers run `extract_text` in an isolated process. Every input
that cannot give text (unsupported or corrupt files, scanned PDFs, empty documents) raises
`PermanentError`, because retrying the same bytes cannot succeed.
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import charset_normalizer
import docx
import pypdf
from docx.table import Table
from docx.text.paragraph import Paragraph

from conveyor.document import Block, BlockKind, Document
from conveyor.errors import PermanentError
from conveyor.extractor.blocks import paragraph_kind, text_blocks
from conveyor.extractor.html import html_blocks
from conveyor.extractor.markup import markdown_blocks, rst_blocks
from conveyor.extractor.pdf import pdf_blocks

Kind = Literal["html", "pdf", "docx", "markdown", "rst", "text"]


@dataclass(frozen=True)
class Extracted:
    """One document's blocks, the format it was read as, and facts about it (pages, charset...)."""

    document: Document
    kind: Kind
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.document.text


def extract_text(data: bytes, *, content_type: str | None = None, filename: str | None = None) -> Extracted:
    """Detect the document's format and return its normalised text; raise PermanentError if none."""
    if not data:
        raise PermanentError("empty document: no bytes to extract text from")
    # Magic numbers outrank the declared type (uploads often arrive as application/octet-stream or
    # with a wrong extension); a declared markup format outranks guessing from the text; HTML is
    # recognised by its markup when nothing more specific was declared.
    kind = _sniff_magic(data) or _declared_kind(content_type, filename) or _sniff_html(data) or "text"
    charset = _charset_param(content_type)
    if kind == "pdf":
        blocks, meta = _pdf(data)
    elif kind == "docx":
        blocks, meta = _docx(data)
    elif kind == "html":
        blocks, meta = _html(data, charset)
    else:
        text, meta = _plain(data, charset, content_type)
        reader = {"markdown": markdown_blocks, "rst": rst_blocks}.get(kind, text_blocks)
        blocks = reader(normalize_whitespace(text, keep_indent=True))
    document = Document.of(_normalized(blocks))
    if not document.blocks:
        raise PermanentError(f"{_LABELS[kind]} document contains no text")
    return Extracted(document=document, kind=kind,
                     meta={**meta, "chars": len(document.text), "blocks": document.counts()})


def _normalized(blocks: Iterable[Block]) -> Iterator[Block]:
    """Blocks with white space collapsed; code and tables keep their lines."""
    for block in blocks:
        if block.kind in ("code", "table"):
            text = normalize_whitespace(block.text, keep_indent=block.kind == "code")
        else:
            text = " ".join(normalize_whitespace(block.text).split())
        if text:
            yield Block(block.kind, text)


# --- Detection -------------------------------------------------------------------------------

_LABELS = {"html": "HTML", "pdf": "PDF", "docx": "DOCX", "markdown": "Markdown", "rst": "reStructuredText",
           "text": "text"}

# Formats we cannot read, recognised so that the error names them instead of "not text".
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Microsoft Office (OLE2) file"),
    (b"\x7fELF", "ELF executable"),
    (b"OggS", "Ogg media"),
    (b"fLaC", "FLAC audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"wOFF", "WOFF font"),
    (b"SQLite format 3\x00", "SQLite database"),
)

# Magic numbers short enough to start ordinary text ("BMW sales...", "ID3 tags..."): they count
# only when the header also holds a NUL byte, which text never does.
_SHORT_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP image"),
    (b"MZ", "Windows executable"),
    (b"ID3", "MP3 audio"),
    (b"BZh", "bzip2 archive"),
)

# Every pattern here sees untrusted bytes: no nested quantifiers, and runs that could rescan the
# input at each starting point are bounded (tests/test_regex_safety.py feeds each 100 KB).
_HTML_MARKERS = re.compile(rb"<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>]|<meta\s[^>]{0,512}charset", re.I)
# A fragment without <html>: starts (after any comments, skipped by _skip_comments) with a common
# block-level element.
_HTML_FRAGMENT = re.compile(rb"<(p|div|article|section|main|h[1-6]|table|ul|ol|span|a|br|title)[\s>/]", re.I)
_SNIFF_BYTES = 4096


def _sniff_magic(data: bytes) -> Kind | None:
    """The format the bytes' magic number proves, where the format puts it; None for text."""
    # Only at the start: text that quotes "%PDF-" is still text. A PDF with junk before its
    # header (which readers tolerate) is read as one when it is declared as one.
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return _sniff_zip(data)
    for magic, name in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            raise PermanentError(f"unsupported document type: {name}")
    for magic, name in _SHORT_MAGIC:
        if data.startswith(magic) and b"\x00" in data[:64]:
            raise PermanentError(f"unsupported document type: {name}")
    if data[8:12] in (b"WEBP", b"AVI ", b"WAVE") and data.startswith(b"RIFF"):
        raise PermanentError(f"unsupported document type: RIFF {data[8:12].decode().strip()} media")
    if data[4:8] == b"ftyp":
        raise PermanentError("unsupported document type: MP4/QuickTime/HEIC media")
    return None


def _sniff_html(data: bytes) -> Kind | None:
    head = _ascii_view(data[:_SNIFF_BYTES])
    if _HTML_MARKERS.search(head) or _HTML_FRAGMENT.match(head, _skip_comments(head)):
        return "html"
    return None


def _skip_comments(head: bytes) -> int:
    """Where the markup starts after leading white space and HTML comments (one linear scan: a
    regular expression for "comments, then a tag" backtracks exponentially on unclosed ones)."""
    position = 0
    while True:
        while position < len(head) and head[position:position + 1].isspace():
            position += 1
        if not head.startswith(b"<!--", position):
            return position
        end = head.find(b"-->", position + 4)
        if end < 0:
            return position
        position = end + 3


def _sniff_zip(data: bytes) -> Kind:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise PermanentError(f"corrupt ZIP/DOCX document: {exc}") from exc
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        raise PermanentError("unsupported document type: XLSX spreadsheet (a ZIP archive, not DOCX)")
    if "ppt/presentation.xml" in names:
        raise PermanentError("unsupported document type: PPTX presentation (a ZIP archive, not DOCX)")
    raise PermanentError("unsupported document type: ZIP archive that is not a DOCX document")


def _ascii_view(head: bytes) -> bytes:
    """The sniffing window with UTF-16/32 BOMs decoded, so wide-encoded HTML is seen as markup."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if head.startswith(bom):
            return head.decode(codec, errors="ignore").encode("ascii", errors="ignore")
    return head.removeprefix(b"\xef\xbb\xbf")


_DECLARED_KINDS: dict[str, Kind] = {
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/x-rst": "rst",
    "text/prs.fallenstein.rst": "rst",
}
_EXTENSION_KINDS: dict[str, Kind] = {
    ".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html", ".xhtml": "html",
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst",
}
# Declarations that say only "some text" or "some bytes": the content decides.
_GENERIC_TYPES = frozenset({"", "text/plain", "application/octet-stream", "binary/octet-stream"})


def _declared_kind(content_type: str | None, filename: str | None) -> Kind | None:
    """The specific kind the sender declared, by type or else by file name; None if neither says."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in _DECLARED_KINDS:
        return _DECLARED_KINDS[mime]
    suffix = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    if suffix in _EXTENSION_KINDS and mime in _GENERIC_TYPES:
        return _EXTENSION_KINDS[suffix]
    return None


_CONTENT_TYPE_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]{1,64})", re.I)


def _charset_param(content_type: str | None) -> str | None:
    match = _CONTENT_TYPE_CHARSET.search(content_type or "")
    return match.group(1) if match else None


# --- PDF ---------------------------------------------------------------------------------------

def _pdf(data: bytes) -> tuple[list[Block], dict[str, Any]]:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise PermanentError("PDF is password-protected; cannot extract text")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PermanentError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; all mean the same here
        raise PermanentError(f"corrupt or unreadable PDF document: {exc}") from exc
    if not any(page.strip() for page in pages):
        raise PermanentError(
            f"PDF has no text layer ({len(pages)} page(s)); it looks scanned, and OCR is not supported"
        )
    blocks = pdf_blocks([normalize_whitespace(page) for page in pages])
    return blocks, {"pages": len(pages), "pages_with_text": sum(1 for page in pages if page.strip())}


# --- DOCX --------------------------------------------------------------------------------------

def _docx(data: bytes) -> tuple[list[Block], dict[str, Any]]:
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document.iter_inner_content()))
    except Exception as exc:  # python-docx/lxml raise many types on damaged parts
        raise PermanentError(f"corrupt or unreadable DOCX document: {exc}") from exc
    return blocks, {"paragraphs": len(blocks), "tables": len(document.tables)}


def _docx_blocks(content: Iterable[Any]) -> Iterator[Block]:
    """Paragraphs labelled by their style, and table rows (cells joined by " | "), in order."""
    for item in content:
        if isinstance(item, Paragraph):
            if item.text.strip():
                yield Block(_docx_kind(item), item.text)
        elif isinstance(item, Table):
            for row in _docx_table_rows(item):
                yield Block("table", row)


def _docx_kind(paragraph: Paragraph) -> BlockKind:
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    if style.startswith(("Heading", "Title", "Subtitle")):
        return "heading"
    numbered = paragraph._p.pPr is not None and paragraph._p.pPr.numPr is not None
    if style.startswith("List") or numbered:
        return "list_item"
    return paragraph_kind(" ".join(paragraph.text.split()))


def _docx_table_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells, previous = [], None
        for cell in row.cells:
            # A merged cell is returned once per grid column it spans; keep it once.
            if previous is not None and cell._tc is previous._tc:
                continue
            previous = cell
            text = " ".join(block.text for block in _docx_blocks(cell.iter_inner_content())).strip()
            if text:
                cells.append(" ".join(text.split()))
        if cells:
            yield " | ".join(cells)


# --- HTML --------------------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"<meta[^>]{1,512}?charset\s*=\s*[\"']?\s*([\w.:-]{1,64})", re.I)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
# WHATWG decoders treat these labels as windows-1252, its superset; pages rely on that.
_LATIN1_LABELS = frozenset({"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "us-ascii", "ascii"})


def _html(data: bytes, declared_charset: str | None) -> tuple[list[Block], dict[str, Any]]:
    # Same precedence as browsers: byte order mark, then the HTTP charset, then <meta charset>.
    meta_charset = _META_CHARSET.search(data[:_SNIFF_BYTES])
    hint = declared_charset or (meta_charset.group(1).decode("ascii", "ignore") if meta_charset else None)
    markup, charset = _decode(data, hint, failure="HTML document does not decode as text in any known charset")
    # lxml rejects str input that carries an encoding declaration; the text is decoded already.
    markup = _XML_DECLARATION.sub("", markup, count=1)
    blocks, method = html_blocks(markup)
    return blocks, {"charset": charset, "html_extractor": method}


# --- Plain text ------------------------------------------------------------------------------

_TERMINAL_FORMATTING = re.compile(rb"[\x20-\x7e]\x08|\x1b\[[0-9;]{0,32}[mK]")


def _plain(data: bytes, declared_charset: str | None, content_type: str | None) -> tuple[str, dict[str, Any]]:
    declared = f" (declared as {content_type})" if content_type else ""
    failure = f"unsupported binary content{declared}: not a PDF, DOCX, HTML or text document in a known charset"
    # Formatted manual pages embolden and underline by overstriking ("X\bX", "_\bX") or with
    # terminal escapes ("\x1b[1m"): formatting, not text.
    data = _TERMINAL_FORMATTING.sub(b"", data) if b"\x08" in data or b"\x1b[" in data else data
    text, charset = _decode(data, declared_charset, failure=failure)
    return text, {"charset": charset}


# Candidates for detection: the common charsets. Letting charset-normalizer try every codec
# Python knows makes short texts "decode" as exotic code pages (mac_cyrillic, cp1006, ...).
_CANDIDATE_CHARSETS = [
    "utf_8", "utf_16", "utf_32", "ascii", "cp1252", "latin_1", "cp1250", "cp1251", "koi8_r",
    "koi8_u", "iso8859_2", "iso8859_5", "iso8859_7", "cp1253", "cp1254", "iso8859_9", "cp1255",
    "cp1256", "cp1257", "cp866", "cp874", "cp932", "shift_jis", "euc_jp", "iso2022_jp",
    "gb18030", "big5", "euc_kr", "cp949", "mac_roman",
]
# Tie-break between candidates that score the same, most common on the web first. Latin-1 text
# scores identically under cp1250/cp1252/cp1257; only cp1252 (its superset) is the safe answer.
_PREFERENCE = [
    "utf_8", "ascii", "cp1252", "latin_1", "cp1251", "koi8_r", "cp932", "shift_jis", "euc_jp",
    "gb18030", "big5", "euc_kr", "cp1250", "utf_16", "utf_32",
]
# Results whose "chaos" (mess) is this close to the best one are compared by language coherence.
_CHAOS_WINDOW = 0.1
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_MAX_CONTROL_RATIO = 0.01
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v")


def _decode(data: bytes, hint: str | None, *, failure: str) -> tuple[str, str]:
    """Decode bytes as text in the declared, UTF-8 or best-detected charset; raise if binary."""
    if data.startswith(_BOMS):
        hint = None  # a byte order mark is more reliable than any declaration
    text, charset = _decode_declared(data, hint) or _decode_utf8(data) or _detect(data, failure)
    controls = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROLS)
    if controls > _MAX_CONTROL_RATIO * len(text):
        raise PermanentError(failure)
    return text, charset


def _decode_declared(data: bytes, hint: str | None) -> tuple[str, str] | None:
    if not hint:
        return None
    name = hint.lower().replace("_", "-")
    codec = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig"}.get(name, "cp1252" if name in _LATIN1_LABELS else name)
    try:
        return data.decode(codec), codec.removesuffix("-sig")
    except (LookupError, UnicodeDecodeError):
        return None  # a wrong or unknown declaration is common; fall back to detection


def _decode_utf8(data: bytes) -> tuple[str, str] | None:
    # Valid UTF-8 with non-ASCII bytes is practically never an accident, and checking is cheap.
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return None


def _detect(data: bytes, failure: str) -> tuple[str, str]:
    results = list(charset_normalizer.from_bytes(data, cp_isolation=_CANDIDATE_CHARSETS))
    # Without a BOM or NUL bytes, a UTF-16/32 reading is a misdetection of 8-bit text.
    if b"\x00" not in data:
        results = [r for r in results if r.bom or not r.encoding.startswith(("utf_16", "utf_32"))]
    if not results:
        raise PermanentError(failure)
    least_chaos = min(r.chaos for r in results)
    window = [r for r in results if r.chaos <= least_chaos + _CHAOS_WINDOW]

    def rank(charset: str) -> int:
        return _PREFERENCE.index(charset) if charset in _PREFERENCE else len(_PREFERENCE)

    def preferred(result: Any) -> str:
        # Each result stands for all charsets that decode these bytes to the same text.
        return min(result.could_be_from_charset, key=rank)

    best = min(window, key=lambda r: (-round(r.coherence, 2), rank(preferred(r))))
    return str(best), preferred(best).replace("_", "-")


# --- Whitespace ----------------------------------------------------------------------------

_HSPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))


def normalize_whitespace(text: str, *, keep_indent: bool = False) -> str:
    """Collapse runs of spaces/tabs, trim lines, keep single line breaks and paragraph breaks;
    with `keep_indent`, leading indentation stays (markup and code give it meaning)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n").translate(_INVISIBLE)
    if keep_indent:
        lines = (line.expandtabs(4).rstrip() for line in text.split("\n"))
    else:
        lines = (_HSPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n" if keep_indent else None)

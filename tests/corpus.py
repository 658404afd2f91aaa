"""The summary quality corpus: documentation that Debian packages install (tests/data/debian-corpus.txt)."""

from __future__ import annotations

import gzip
import subprocess
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent / "data" / "debian-corpus.txt"
DOC_ROOT = Path("/usr/share/doc")
_CONTENT_TYPES = {".html": "text/html", ".pdf": "application/pdf", ".md": "text/markdown",
                  ".rst": "text/x-rst"}


@dataclass(frozen=True)
class CorpusDocument:
    package: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".gz")

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES.get(Path(self.name).suffix, "text/plain")

    def read(self) -> bytes:
        data = self.path.read_bytes()
        return gzip.decompress(data) if self.path.suffix == ".gz" else data


def corpus() -> list[CorpusDocument]:
    documents = []
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, path = line.split(maxsplit=1)
            documents.append(CorpusDocument(package, Path(path) if path.startswith("/") else DOC_ROOT / path))
    return documents


def packages() -> list[str]:
    return sorted({document.package for document in corpus()})


def missing_packages() -> list[str]:
    """Packages of the corpus that dpkg does not have installed."""
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *packages()],
                            capture_output=True, text=True)
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [package for package in packages() if package not in installed]

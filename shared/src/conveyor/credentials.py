"""API keys: made once, shown once, stored only as a hash, each bound to one tenant.

A key reads `cvk_<id>_<secret>`. The key file (JSON, `CONVEYOR_API_KEYS_FILE`, default
`<home>/api-keys.json`; on Kubernetes a mounted Secret) holds per key its id, tenant, name and the
SHA-256 of the whole key. A fast hash is right here: the secret is 256 random bits, so there is
nothing to guess, and a lookup is one dictionary read and one constant-time compare.

`conveyor keys create|list|revoke` edit the file; a running gateway notices the change (it looks
at the file's modification time at most once a second), so a revoked key stops working without a
restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter

from conveyor.events import utcnow

PREFIX = "cvk_"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_KEY = re.compile(r"^cvk_([A-Za-z0-9]{8,32})_([A-Za-z0-9_-]{20,128})$")
RELOAD_CHECK_SECONDS = 1.0


class KeyFileError(ValueError):
    """The key file cannot be read as a list of keys."""


class ApiKey(BaseModel):
    id: str = Field(pattern=r"^[A-Za-z0-9]{8,32}$")
    tenant: str = Field(pattern=TENANT_PATTERN)
    name: str = Field("", max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


_KEYS = TypeAdapter(list[ApiKey])


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(tenant: str, name: str = "") -> tuple[str, ApiKey]:
    """A fresh key and its stored form (which does not contain it)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(id=key_id, tenant=tenant, name=name, sha256=digest(key))


def read_keys(path: Path) -> list[ApiKey]:
    """The keys in the file; no file is no keys."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        return _KEYS.validate_json(raw) if raw.strip() else []
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a valid key file: {str(exc).splitlines()[0]}") from None


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file in one step (readable by this user only), so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(_KEYS.dump_json(keys, indent=2) + b"\n")
    os.replace(temporary, path)


def add_key(path: Path, tenant: str, name: str = "") -> tuple[str, ApiKey]:
    key, entry = new_key(tenant, name)
    write_keys(path, [*read_keys(path), entry])
    return key, entry


def revoke_key(path: Path, key_id: str) -> ApiKey | None:
    """Mark the key revoked (kept, so `list` still shows it); None when there is no such key."""
    keys = read_keys(path)
    for index, entry in enumerate(keys):
        if entry.id == key_id:
            if entry.revoked_at is None:
                keys[index] = entry = entry.model_copy(update={"revoked_at": utcnow()})
                write_keys(path, keys)
            return entry
    return None


class KeyRing:
    """The gateway's view of the key file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_id: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self.reload()

    def reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        self._checked = time.monotonic()
        if stamp != self._stamp:
            self._by_id = {entry.id: entry for entry in read_keys(self.path) if entry.revoked_at is None}
            self._stamp = stamp

    def __len__(self) -> int:
        return len(self._by_id)

    def verify(self, key: str) -> ApiKey | None:
        """The key's entry when it is a valid, unrevoked key; None otherwise."""
        if time.monotonic() - self._checked >= RELOAD_CHECK_SECONDS:
            try:
                self.reload()
            except KeyFileError:
                pass  # a broken edit keeps the keys last read; the gateway logged it at start
        match = _KEY.match(key)
        entry = self._by_id.get(match.group(1)) if match else None
        if entry is None or not hmac.compare_digest(entry.sha256, digest(key)):
            return None
        return entry


"""The credentials of a local pipeline, made once per CONVEYOR_HOME and never a known default:
the webhook master secret (`<home>/webhook-secret`) and an API key for the CLI
(`<home>/api-key`, its hash in the home's key file). Both are readable by this user only."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from conveyor.credentials import add_key
from conveyor.stores.base import DEFAULT_TENANT

WEBHOOK_SECRET_FILE = "webhook-secret"
API_KEY_FILE = "api-key"


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text + "\n")


def local_webhook_secret(home: Path) -> tuple[str, Path]:
    """The master webhook secret in `<home>/webhook-secret` (a Standard Webhooks `whsec_` value),
    made on first use, and its path."""
    path = home / WEBHOOK_SECRET_FILE
    if not path.exists():
        _write_private(path, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return path.read_text().strip(), path


def local_api_key(home: Path, keys_file: Path) -> tuple[str, Path]:
    """The CLI's API key in `<home>/api-key` (tenant `default`), made and registered in
    `keys_file` on first use, and its path."""
    path = home / API_KEY_FILE
    if not path.exists():
        key, _ = add_key(keys_file, DEFAULT_TENANT, name="local CLI (conveyor up)")
        _write_private(path, key)
    return path.read_text().strip(), path


def cli_api_key(home: Path) -> str | None:
    """The key the client commands send: CONVEYOR_API_KEY, else the local pipeline's."""
    if os.environ.get("CONVEYOR_API_KEY"):
        return os.environ["CONVEYOR_API_KEY"].strip()
    try:
        return (home / API_KEY_FILE).read_text().strip() or None
    except OSError:
        return None

"""The webhook signing key of a local pipeline: made once per CONVEYOR_HOME, never a known default."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

FILE_NAME = "webhook-secret"


def local_webhook_secret(home: Path) -> tuple[str, Path]:
    """The key in `<home>/webhook-secret`, made on first use (a Standard Webhooks `whsec_` secret,
    readable by this user only), and its path."""
    path = home / FILE_NAME
    if not path.exists():
        key = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key + "\n")
    return path.read_text().strip(), path

"""`conveyor keys create|list|revoke` and `conveyor webhook-secret`: a pipeline's credentials.

They edit the key file the gateway reads (`CONVEYOR_API_KEYS_FILE`, default
`<home>/api-keys.json`); on Kubernetes, point `--file` at a copy and put it in the chart's Secret.
A key is printed once, when it is made: only its hash is kept.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from conveyor.cli.local_credentials import WEBHOOK_SECRET_FILE
from conveyor.credentials import TENANT_PATTERN, KeyFileError, add_key, read_keys, revoke_key
from conveyor.settings import Settings
from conveyor.webhook_keys import master_secrets, tenant_secrets


def run(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file) if getattr(args, "file", None) else settings.resolved_api_keys_file()
    try:
        if args.command == "webhook-secret":
            return webhook_secret(settings, args.tenant)
        if args.keys_command == "create":
            return create(path, args.tenant, args.name)
        if args.keys_command == "revoke":
            return revoke(path, args.key_id)
        return list_keys(path)
    except KeyFileError as exc:
        print(f"conveyor: {exc}; fix or remove it", file=sys.stderr)
        return 2


def create(path: Path, tenant: str, name: str) -> int:
    if not re.match(TENANT_PATTERN, tenant):
        print("conveyor: a tenant is 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter "
              "or digit", file=sys.stderr)
        return 2
    key, entry = add_key(path, tenant, name)
    print(key)
    print(f"key {entry.id} for tenant {tenant} added to {path}; it is shown only now", file=sys.stderr)
    return 0


def list_keys(path: Path) -> int:
    for entry in read_keys(path):
        state = f"revoked {entry.revoked_at:%Y-%m-%d %H:%M}" if entry.revoked_at else "active"
        print(json.dumps({"id": entry.id, "tenant": entry.tenant, "name": entry.name,
                          "created_at": entry.created_at.isoformat(timespec="seconds"), "state": state}))
    return 0


def revoke(path: Path, key_id: str) -> int:
    entry = revoke_key(path, key_id)
    if entry is None:
        print(f"conveyor: no key {key_id} in {path} (see `conveyor keys list`)", file=sys.stderr)
        return 1
    print(f"key {key_id} of tenant {entry.tenant} revoked; the gateway refuses it within a second", file=sys.stderr)
    return 0


def webhook_secret(settings: Settings, tenant: str) -> int:
    """The tenant's webhook secret(s), the current one first: what its receivers verify with."""
    if settings.webhook_secret is not None:
        master = settings.webhook_secret.get_secret_value()
    elif (settings.home / WEBHOOK_SECRET_FILE).exists():
        master = (settings.home / WEBHOOK_SECRET_FILE).read_text().strip()
    else:
        print("conveyor: no webhook master secret: set CONVEYOR_WEBHOOK_SECRET, or run `conveyor up` once "
              "(it makes one in CONVEYOR_HOME)", file=sys.stderr)
        return 2
    for secret in tenant_secrets(master_secrets(master), tenant):
        print(secret)
    return 0

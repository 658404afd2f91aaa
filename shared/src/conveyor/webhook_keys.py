"""Each tenant's webhook signing secret, derived from the pipeline's master secret.

`CONVEYOR_WEBHOOK_SECRET` is the master: one secret, or two during a rotation (comma separated,
the new one first). A tenant's secret is HMAC-SHA256(master, tenant) in the Standard Webhooks
`whsec_` form, so every tenant has its own secret without any stored per tenant (API-key and OIDC
tenants alike), and one tenant's secret tells nothing about another's or about the master.

While two masters are set, every webhook carries a signature from each of the tenant's two
secrets (the specification allows several, space separated): a receiver holding either one
verifies it, so receivers move to the new secret at their own pace, and the old master is then
dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

WHSEC = "whsec_"
_CONTEXT = b"conveyor webhook secret v1\x00"


def master_secrets(value: str) -> list[bytes]:
    """The master keys in a `CONVEYOR_WEBHOOK_SECRET` value: `whsec_<base64>` ones decoded, any
    other taken as its UTF-8 bytes."""
    masters = []
    for part in (piece.strip() for piece in value.split(",")):
        if not part:
            continue
        masters.append(base64.b64decode(part[len(WHSEC):], validate=True) if part.startswith(WHSEC)
                       else part.encode("utf-8"))
    if not masters:
        raise ValueError("CONVEYOR_WEBHOOK_SECRET holds no secret")
    return masters


def tenant_secret(master: bytes, tenant: str) -> str:
    derived = hmac.new(master, _CONTEXT + tenant.encode("utf-8"), hashlib.sha256).digest()
    return WHSEC + base64.b64encode(derived).decode("ascii")


def tenant_secrets(masters: list[bytes], tenant: str) -> list[str]:
    """The tenant's secrets, the current one first."""
    return [tenant_secret(master, tenant) for master in masters]

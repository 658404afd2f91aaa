"""Signed webhook delivery, refusing targets inside the network unless allowed.

Receivers verify `X-Conveyor-Signature: sha256=<hex>` = HMAC-SHA256(secret, "<timestamp>.<body>")
with the timestamp from `X-Conveyor-Timestamp`, and may de-duplicate on `X-Conveyor-Delivery`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx

from conveyor import metrics
from conveyor.errors import PermanentError, TransientError


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse non-HTTP URLs and hosts resolving to loopback, private or link-local addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"callback_url must be an http(s) URL, got {url!r}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve callback host {parts.hostname}: {exc}") from exc
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address.is_loopback or address.is_private or address.is_link_local or address.is_reserved \
                or address.is_multicast or address.is_unspecified:
            raise PermanentError(
                f"callback host {parts.hostname} resolves to {address}, which is not a public address "
                "(set CONVEYOR_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
            )


async def deliver(client: httpx.AsyncClient, url: str, body: bytes, *, secret: str, delivery_id: str) -> None:
    """POST once; 2xx is success, 408/429/5xx and network errors are worth a retry, other 4xx are not."""
    timestamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "x-conveyor-delivery": delivery_id,
        "x-conveyor-timestamp": timestamp,
        "x-conveyor-signature": signature(secret, timestamp, body),
    }
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        metrics.WEBHOOK_DELIVERIES.labels("error").inc()
        raise TransientError(f"webhook {url} failed: {type(exc).__name__}: {exc}") from exc
    code = response.status_code
    if 200 <= code < 300:
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        return
    metrics.WEBHOOK_DELIVERIES.labels(f"http_{code // 100}xx").inc()
    if code in (408, 429) or code >= 500:
        raise TransientError(f"webhook {url} answered {code}")
    raise PermanentError(f"webhook {url} answered {code}: {response.text[:200]}")

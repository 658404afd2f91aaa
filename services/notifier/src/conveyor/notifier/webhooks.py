"""Signed webhook delivery (Standard Webhooks), refusing targets inside the network unless allowed.

Every POST carries `webhook-id`, `webhook-timestamp` and `webhook-signature` as the Standard
Webhooks specification defines them, so any of its libraries verifies them. Delivery is at least
once: the id is the job's, the same on every retry and every redelivery, and receivers
de-duplicate on it (a crash between a receiver's answer and Conveyor recording it sends again).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from conveyor import metrics
from conveyor.errors import PermanentError, TransientError
from conveyor.stores.base import JobRecord


class Refused(PermanentError):
    """The receiver answered 4xx (other than 408 and 429): it will not take this delivery."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Unanswered(TransientError):
    """No 2xx: refused connection, timeout, 408, 429 or 5xx (`status` None when nothing answered)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def result_body(record: JobRecord) -> bytes:
    return json.dumps({
        "job_id": record.job_id, "user_id": record.user_id, "status": "completed",
        "summary": record.summary, "meta": record.meta,
    }).encode()


def signer(secret: str) -> Webhook:
    """The signer for CONVEYOR_WEBHOOK_SECRET: a `whsec_<base64>` value is a Standard Webhooks
    secret; any other value is used as the key's UTF-8 bytes (its whsec_ form is
    `"whsec_" + base64(secret)`)."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode("utf-8"))


async def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse non-HTTP URLs and hosts resolving to loopback, private or link-local addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"callback_url must be an http(s) URL, not {parts.scheme or 'no scheme'!r}")
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


async def deliver(client: httpx.AsyncClient, url: str, body: bytes, *, webhook: Webhook, delivery_id: str) -> None:
    """POST once; 2xx is success, 408/429/5xx and network errors are worth a retry, other 4xx are not."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign(delivery_id, now, body.decode("utf-8")),
    }
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        metrics.WEBHOOK_DELIVERIES.labels("error").inc()
        raise Unanswered(f"webhook to {_where(url)} failed: {type(exc).__name__}") from exc
    code = response.status_code
    if 200 <= code < 300:
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        return
    metrics.WEBHOOK_DELIVERIES.labels(f"http_{code // 100}xx").inc()
    if code in (408, 429) or code >= 500:
        raise Unanswered(f"webhook to {_where(url)} answered {code}", status=code)
    raise Refused(f"webhook to {_where(url)} answered {code}", status=code)


def _where(url: str) -> str:
    """Host and path of a callback URL, without credentials or query (which may hold tokens)."""
    parts = urlsplit(url)
    return f"{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

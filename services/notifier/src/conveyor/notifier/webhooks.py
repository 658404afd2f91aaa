"""Signed webhook delivery (Standard Webhooks), refusing targets inside the network unless allowed.

Every POST carries `webhook-id`, `webhook-timestamp` and `webhook-signature` as the Standard
Webhooks specification defines them, so any of its libraries verifies them; the signature is the
job's tenant's (one per tenant secret while the master rotates). Delivery is at least once: the id
is the job's, the same on every retry and every redelivery, and receivers de-duplicate on it (a
crash between a receiver's answer and Conveyor recording it sends again).

The callback host is resolved once and every address it resolves to must be global (no loopback,
private, shared 100.64.0.0/10, link-local or reserved one); the POST then goes to that checked
address (the URL's name stays in Host and in TLS SNI and certificate checks), so a DNS answer that
changes in between cannot aim it inside the network. Redirects are not followed (a 3xx is a refusal),
and at most `max_response_bytes` of the answer are read, all within one deadline.
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
from conveyor.stores.base import JobRecord, JobState, StageState
from conveyor.webhook_keys import master_secrets, tenant_secrets


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
    """`job.completed` with the summary, `job.failed` with the stage and the reason, or `job.cancelled`."""
    if record.state == JobState.cancelled:
        return json.dumps({"type": "job.cancelled", "job_id": record.job_id, "user_id": record.user_id,
                           "status": "cancelled", "meta": record.meta}).encode()
    if record.state == JobState.failed:
        stage = next((name for name, progress in record.stages.items() if progress.state == StageState.failed), None)
        return json.dumps({
            "type": "job.failed", "job_id": record.job_id, "user_id": record.user_id, "status": "failed",
            "stage": stage, "error": (record.error or "")[:1000], "meta": record.meta,
        }).encode()
    return json.dumps({
        "type": "job.completed", "job_id": record.job_id, "user_id": record.user_id, "status": "completed",
        "summary": record.summary, "meta": record.meta,
    }).encode()


def signers(master_secret: str, tenant: str) -> list[Webhook]:
    """The tenant's signers, one per master secret in CONVEYOR_WEBHOOK_SECRET."""
    return [Webhook(secret) for secret in tenant_secrets(master_secrets(master_secret), tenant)]


def _global(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address.is_global and not address.is_multicast


async def check_target(url: str, *, allow_private: bool) -> str | None:
    """The address to POST to: the callback host's, resolved once, every address it has global.
    None when private targets are allowed (then the client resolves the name itself)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"callback_url must be an http(s) URL, not {parts.scheme or 'no scheme'!r}")
    if allow_private:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443,
                                                             type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve callback host {parts.hostname}: {exc}") from exc
    addresses = [ipaddress.ip_address(sockaddr[0].split("%")[0]) for *_, sockaddr in infos]
    for address in addresses:
        if not _global(address):
            raise PermanentError(
                f"callback host {parts.hostname} resolves to {address}, which is not a global address "
                "(set CONVEYOR_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
            )
    if not addresses:
        raise TransientError(f"callback host {parts.hostname} has no address")
    return str(addresses[0])


def _aimed(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL with its host replaced by the checked address, the Host header and the TLS name."""
    if address is None:
        return url, {}, {}
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    extensions = {"sni_hostname": str(parts.hostname)} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), {"host": host_header}, extensions


async def deliver(client: httpx.AsyncClient, url: str, body: bytes, *, webhooks: list[Webhook], delivery_id: str,
                  address: str | None = None, max_response_bytes: int = 65_536, timeout: float = 10.0) -> None:
    """POST once (to `address` when given); 2xx is success, 408/429/5xx and network errors are worth
    a retry, other answers (3xx and 4xx) are not."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    target, host_header, extensions = _aimed(url, address)
    text = body.decode("utf-8")
    headers = {
        **host_header,
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(webhook.sign(delivery_id, now, text) for webhook in webhooks),
    }
    try:
        async with asyncio.timeout(timeout):
            request = client.build_request("POST", target, content=body, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                await _read_at_most(response, max_response_bytes)
            finally:
                await response.aclose()
    except (httpx.HTTPError, TimeoutError) as exc:
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


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    """Read (and drop) up to `limit` bytes of the answer: a receiver cannot make us read more."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received >= limit:
            break


def _where(url: str) -> str:
    """Host and path of a callback URL, without credentials or query (which may hold tokens)."""
    parts = urlsplit(url)
    return f"{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

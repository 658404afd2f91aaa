"""The gateway's error answers, written the same way from FastAPI handlers and from plain ASGI code
(the middlewares and the lean `/submit` route), so a client sees one shape whoever answered."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import Scope, Send

from conveyor.breakers import DependencyUnavailable
from conveyor.stores.base import JobState

JSON_HEADERS = ((b"content-type", b"application/json"),)


def validation_problem(errors: Iterable[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """400 for a body that is not JSON, 422 for invalid fields; each error's location and message,
    without echoing the (possibly huge) input back."""
    errors = list(errors)
    plain = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, {"detail": "malformed JSON body", "errors": plain}
    return 422, {"detail": "invalid request", "errors": plain}


def encoded_headers(headers: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]


async def send_json(send: Send, status: int, payload: Mapping[str, Any],
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def unavailable(exc: DependencyUnavailable) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """A store the request needs is down: nothing was accepted, and the client may simply retry."""
    retry_after = str(max(1, round(exc.retry_after or 5)))
    return 503, {"detail": f"{exc.dependency} is unavailable; nothing was accepted, try again later"}, \
        [(b"retry-after", retry_after.encode())]


def accepted(public_url: str, scope: Scope, job_id: str, state: JobState = JobState.queued) -> dict[str, str]:
    """The 202 body: the job and where to follow it (under `CONVEYOR_PUBLIC_URL`, or the URL the
    client called)."""
    base = public_url.rstrip("/")
    if not base:
        host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
        if host is None:
            server_host, server_port = scope.get("server") or ("localhost", 80)
            host = f"{server_host}:{server_port}"
        base = f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")
    return {"job_id": job_id, "status": state.value, "status_url": f"{base}/jobs/{job_id}"}

"""`POST /submit` as a plain ASGI endpoint: the route that carries most of the gateway's traffic.

FastAPI's per-request machinery (its middleware stack, routing, dependency solving, the Request
object) costs about 100 µs a request, four times what uvicorn itself does and more than accepting
the job (bench/ingest.py). So the gateway answers `POST /submit` before FastAPI
(`conveyor.gateway.lean.LeanFastAPI`), inside the same middlewares as every other route (metrics
and span, credential and tenant rate, body limit). The route stays declared on the FastAPI app for
the OpenAPI document, and this endpoint applies what that declaration says: the body is a
`SubmitRequest` (the same pydantic model, decoded straight from the bytes; JSON content types
only), `Idempotency-Key` matches `KEY_PATTERN`, and errors have the shape FastAPI gives them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from conveyor import metrics
from conveyor.breakers import DependencyUnavailable
from conveyor.events import Payload
from conveyor.gateway.answers import accepted, encoded_headers, send_json, unavailable, validation_problem
from conveyor.gateway.documents import content_sha256
from conveyor.gateway.idempotency import KEY_PATTERN
from conveyor.gateway.intake import Admission, Submission
from conveyor.gateway.models import SubmitRequest
from conveyor.settings import Settings

_IDEMPOTENCY_KEY = re.compile(KEY_PATTERN)


class _Invalid(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


class SubmitEndpoint:
    def __init__(self, state: State, settings: Settings) -> None:
        self.state, self.settings = state, settings  # the app's state: intake and blobs exist once it started
        self.payload_bytes = metrics.HTTP_PAYLOAD_BYTES.labels("/submit")
        self.submitted = metrics.JOBS_SUBMITTED.labels("json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            admission = await self._accept(scope, receive)
        except _Invalid as invalid:
            await send_json(send, *validation_problem(invalid.errors))
        except HTTPException as refused:
            await send_json(send, refused.status_code, {"detail": refused.detail}, encoded_headers(refused.headers))
        except DependencyUnavailable as down:
            await send_json(send, *unavailable(down))
        else:
            await send_json(send, 202, accepted(self.settings.public_url, scope, admission.job_id, admission.state))

    async def _accept(self, scope: Scope, receive: Receive) -> Admission:
        content_type, idempotency_key = b"", None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise _Invalid([{"loc": ("header", "Idempotency-Key"),
                             "msg": f"String should match pattern '{KEY_PATTERN}'"}])
        body = await _read_body(receive)
        if not body:
            raise _Invalid([{"loc": ("body",), "msg": "Field required"}])
        if not _is_json(content_type):
            raise _Invalid([{"loc": ("body",), "msg": "the body must be JSON (Content-Type: application/json)"}])
        try:
            request = SubmitRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _Invalid([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        data = request.content.encode("utf-8")

        async def payload() -> Payload:  # built only for a job that runs
            self.payload_bytes.observe(len(data))
            self.submitted.inc()
            if len(data) >= self.settings.claim_check_bytes:
                return Payload(blob=await self.state.blobs.put(data), content_type=request.content_type)
            return Payload(text=request.content, content_type=request.content_type)

        def digest() -> str:
            return hashlib.sha256(request.model_dump_json().encode()).hexdigest()

        document = request.document_id
        content = content_sha256(request.content_type, hashlib.sha256(data).hexdigest()) if document else None
        submission = Submission(tenant=scope["state"]["principal"].tenant, user_id=request.user_id,
                                callback_url=str(request.callback_url) if request.callback_url else None,
                                payload=payload, document_id=document, content_sha256=content)
        return await self.state.intake.accept(submission, idempotency_key, digest)


async def _read_body(receive: Receive) -> bytes:
    """The whole body (the body-limit middleware outside bounds it)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to answer
            raise HTTPException(400, "the client disconnected before its body arrived")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _is_json(content_type: bytes) -> bool:
    """What FastAPI reads as JSON: application/json or application/*+json, any parameters."""
    media = content_type.split(b";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition(b"/")
    return maintype == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))

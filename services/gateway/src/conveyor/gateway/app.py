"""The gateway's FastAPI application: submit, upload and follow jobs, for authenticated tenants.

The public port serves the API and the probes; metrics and the API docs are on the metrics port
(`CONVEYOR_METRICS_PORT`), which the chart keeps inside the cluster.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timezone
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor import metrics, tracing, usage
from conveyor.breakers import DependencyUnavailable
from conveyor.events import DOCUMENT_ID_PATTERN, Payload, utcnow
from conveyor.gateway.admission import BacklogBound, TenantRate, refuse
from conveyor.gateway.answers import accepted, unavailable, validation_problem
from conveyor.gateway.auth import Authenticate, Authenticator, Principal, caller
from conveyor.gateway.idempotency import KEY_PATTERN
from conveyor.gateway.intake import PRODUCE_TIMEOUT_MS, Intake, Submission
from conveyor.gateway.documents import DocumentView, ErasureAccepted, content_sha256
from conveyor.gateway.job_events import STREAM_RETRY_AFTER_SECONDS, EventStream, StreamSlots, TooManyStreams, job_events
from conveyor.gateway.lag_exporter import export_lag_forever
from conveyor.gateway.limits import BodyLimitMiddleware
from conveyor.gateway.models import (
    DOCUMENT_ID_DESCRIPTION,
    MAX_CONTENT_TYPE_CHARS,
    PAGE_KEY_PATTERN,
    Accepted,
    Rfc3339,
    Day,
    JobPage,
    JobUsage,
    JobView,
    TenantUsage,
    RedeliverRequest,
    Redelivered,
    SubmitRequest,
    problems,
)
from conveyor.gateway.observability import ObserveRequests
from conveyor.gateway import documents, redelivery
from conveyor.gateway.operations import serve_operations
from conveyor.gateway.lean import LeanFastAPI
from conveyor.gateway.submit_route import SubmitEndpoint
from conveyor.kafka.admin import ensure_topics
from conveyor.kafka.clients import make_producer
from conveyor.settings import Settings, get_settings
from conveyor.stores import open_blob_store, open_job_store
from conveyor.stores.base import JobRecord, JobState
from conveyor.stores.blobs import BlobTooLarge
from conveyor.stores.documents import versions as document_versions
from conveyor.topics import all_topics

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1024 * 1024
OCTET_STREAM = "application/octet-stream"
SUPPORTED_UPLOADS = {
    "text/plain", "text/html", "application/xhtml+xml", "application/pdf", "text/markdown", "text/x-markdown",
    "text/x-rst", "text/csv",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document", OCTET_STREAM,
}
MAX_FILENAME_CHARS = 255
SUPPORTED_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".html", ".htm", ".xhtml", ".pdf",
                      ".docx")


DOCUMENT_ID = re.compile(DOCUMENT_ID_PATTERN)
LIST_PARAMETERS = {"state", "since", "before", "limit", "document"}

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=KEY_PATTERN,
    description="Makes a retry safe: the same key (per tenant, 24 h) returns the first request's job; "
                "with another body it is 422.")]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    authenticator = Authenticator(settings)
    backlog = BacklogBound(settings.max_pipeline_lag, settings.lag_interval_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup_tracing("gateway", console=settings.trace_console)
        if settings.create_topics:
            await ensure_topics(settings, all_topics(settings.topic_prefix, settings.pipeline_stages))
        # No linger: requests arrive while a send is in flight and batch behind it anyway, and
        # every millisecond of linger is a millisecond more for each client (bench/ingest.py).
        app.state.producer = make_producer(settings, linger_ms=0, request_timeout_ms=PRODUCE_TIMEOUT_MS)
        await app.state.producer.start()
        app.state.store = open_job_store(settings)
        app.state.blobs = open_blob_store(settings)
        app.state.intake = Intake(settings, app.state.producer, app.state.store, app.state.blobs, backlog)
        lag_task = asyncio.create_task(export_lag_forever(settings, backlog.measured)) \
            if settings.lag_interval_seconds else None
        operations = await serve_operations(app, settings) if settings.metrics_port else None
        # Everything loaded so far lives as long as the process: out of the collector's sight, a
        # full collection no longer walks it, which took the p99 latency to three times the p50.
        gc.freeze()
        log.info("gateway ready on %s:%d, publishing to %s; %d API key(s)%s", settings.gateway_host,
                 settings.gateway_port, app.state.intake.topic, len(authenticator.keys),
                 f", OIDC tokens from {settings.oidc_issuer}" if settings.oidc_issuer else "")
        try:
            yield
        finally:
            if lag_task:
                lag_task.cancel()
            if operations:
                operations.close()
            await app.state.producer.stop()
            await app.state.store.close()
            tracing.shutdown_tracing()

    app = LeanFastAPI(
        # Outermost first. Requests the body limit refuses (413) are measured too; an
        # unauthenticated or rate-limited request is refused before its body is read.
        middleware_stack=[
            (ObserveRequests, {}),
            (Authenticate, {"authenticator": authenticator, "rate": TenantRate(settings.tenant_requests_per_second),
                            "open_paths": {"/healthz", "/readyz"}}),
            (BodyLimitMiddleware, {"limits": {"/upload": settings.max_upload_bytes}, "default": settings.max_json_bytes}),
        ],
        title="Conveyor gateway",
        version="0.1.0",
        description="Submit documents for extraction and summarization; follow jobs by id. Every route but the "
                    "probes needs `Authorization: Bearer <API key or OIDC token>`; jobs belong to the credential's tenant.",
        lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, problem = validation_problem(exc.errors())
        return JSONResponse(problem, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Allow: every method of the path, not only the first route's (GET and DELETE
            # /jobs/{id}); a path declared as it is (/jobs/redeliver) has its own methods only.
            path = request.url.path
            routes = [route for route in app.routes if isinstance(route, APIRoute) and route.path_regex.match(path)]
            routes = [route for route in routes if route.path == path] or routes
            exc.headers = {**(exc.headers or {}), "allow": ", ".join(sorted({m for r in routes for m in r.methods}))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(DependencyUnavailable)
    async def dependency_down(request: Request, exc: DependencyUnavailable) -> JSONResponse:
        status, problem, headers = unavailable(exc)
        return JSONResponse(problem, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    @app.post("/submit", status_code=202, response_model=Accepted, summary="Submit text or HTML",
              responses=problems(400, 401, 413, 422, 429, 503))
    async def submit(body: SubmitRequest, principal: Annotated[Principal, Depends(caller)],
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
        """Declared for the OpenAPI document; `SubmitEndpoint` answers it, before FastAPI."""
        raise AssertionError("POST /submit is answered by conveyor.gateway.submit_route")

    @app.post("/upload", status_code=202, response_model=Accepted, summary="Upload a document file",
              responses=problems(400, 401, 413, 415, 422, 429, 503))
    async def upload(
        request: Request,
        principal: Annotated[Principal, Depends(caller)],
        file: Annotated[UploadFile, File(description="HTML, PDF, DOCX or plain text in any common charset.")],
        user_id: Annotated[str, Form(min_length=1, max_length=256)],
        callback_url: Annotated[str | None, Form()] = None,
        document_id: Annotated[str | None, Form(pattern=DOCUMENT_ID_PATTERN, description=DOCUMENT_ID_DESCRIPTION)] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        intake: Intake = request.app.state.intake
        await intake.admit(principal.tenant)  # before the body is read
        declared, filename = file.content_type or "", file.filename or "upload"
        if len(declared) > MAX_CONTENT_TYPE_CHARS or len(filename) > MAX_FILENAME_CHARS \
                or not declared.isprintable() or not filename.isprintable():
            raise HTTPException(422, f"the file's content type (at most {MAX_CONTENT_TYPE_CHARS} characters) and "
                                     f"name (at most {MAX_FILENAME_CHARS}) must be short, printable text")
        content_type = (declared or OCTET_STREAM).split(";")[0].strip().lower()
        # Without a real type (octet-stream), the name's suffix has to say it is a supported document.
        named = filename.lower().endswith(SUPPORTED_SUFFIXES)
        if (content_type not in SUPPORTED_UPLOADS and not named) or (content_type == OCTET_STREAM and not named):
            raise HTTPException(415, f"unsupported file type {content_type!r} ({filename[:100]}); "
                                     "send HTML, PDF, DOCX or plain text")
        if callback_url is not None:
            try:
                callback_url = str(SubmitRequest.model_validate(
                    {"user_id": user_id, "content": "-", "callback_url": callback_url}).callback_url)
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from None
        size = file.size or 0
        if size >= settings.claim_check_bytes or size == 0:
            try:
                ref = await request.app.state.blobs.put_stream(_chunks(file), max_bytes=settings.max_upload_bytes)
            except BlobTooLarge as exc:
                raise HTTPException(413, str(exc)) from exc
            if ref.size == 0:
                raise HTTPException(400, "uploaded file is empty")
            payload, size, content = Payload(blob=ref, content_type=content_type, filename=filename), ref.size, ref.sha256
        else:
            data = await file.read()
            payload = Payload.from_bytes(data, content_type=content_type, filename=filename)
            content = hashlib.sha256(data).hexdigest()

        async def built() -> Payload:  # asked for only by a job that runs
            metrics.HTTP_PAYLOAD_BYTES.labels("/upload").observe(size)
            metrics.JOBS_SUBMITTED.labels("upload").inc()
            return payload

        def digest() -> str:
            return hashlib.sha256(json.dumps([content, content_type, filename, user_id, callback_url,
                                              document_id]).encode()).hexdigest()

        submission = Submission(tenant=principal.tenant, user_id=user_id, callback_url=callback_url, payload=built,
                                document_id=document_id, meta={"size": size},
                                content_sha256=content_sha256(content_type, content) if document_id else None)
        admission = await intake.accept(submission, idempotency_key, digest, admitted=True)
        if payload.blob and (not admission.new or admission.state == JobState.completed):
            # A repeat (the first request's blob is the job's), or an unchanged version: nothing reads it.
            await request.app.state.blobs.delete(payload.blob)
        return JSONResponse(accepted(settings.public_url, request.scope, admission.job_id, admission.state),
                            status_code=202)

    async def tenant_job(request: Request, job_id: str, principal: Principal) -> JobRecord:
        """The job, when it is the caller's tenant's; another tenant's job is 404 like a missing one."""
        record = await request.app.state.store.get(job_id)
        if record is None or record.tenant != principal.tenant:
            raise HTTPException(404, f"no job {job_id[:128]}")
        return record

    @app.get("/jobs", response_model=JobPage, summary="The tenant's jobs, newest first",
             responses=problems(401, 422, 429))
    async def list_jobs(
        request: Request,
        principal: Annotated[Principal, Depends(caller)],
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        since: Annotated[Rfc3339 | None, Query(description="Only jobs updated at or after this time.")] = None,
        before: Annotated[str | None, Query(pattern=PAGE_KEY_PATTERN,
                                            description="The `next` of the page before.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        document: Annotated[str | None, Query(pattern=DOCUMENT_ID_PATTERN,
                                              description="Only the versions of this document.")] = None,
    ) -> JobPage:
        refuse_unknown_parameters(request, LIST_PARAMETERS)  # a misspelt filter must not quietly list everything
        found = await request.app.state.store.list_jobs(principal.tenant, state=state, since=_utc(since),
                                                        before=before, limit=limit + 1, document=document)
        page = found[:limit]
        return JobPage(jobs=[JobView.of(record) for record in page],
                       next=page[-1].page_key() if len(found) > limit else None)

    # Before /jobs/{job_id}: the router answers 405 for this path from the first route that matches it.
    @app.post("/jobs/redeliver", response_model=Redelivered, status_code=202,
              summary="Send the webhooks of every job that ended so since a time again, now",
              responses=problems(400, 401, 413, 422, 429))
    async def redeliver_all(body: RedeliverRequest, request: Request,
                            principal: Annotated[Principal, Depends(caller)]) -> Redelivered:
        scheduled, after = await redelivery.schedule_all(request.app.state.store, principal.tenant,
                                                         JobState(body.state), _utc(body.since), body.before)
        return Redelivered(scheduled=scheduled, next=after)

    @app.get("/jobs/{job_id}", response_model=JobView, summary="A job's status, per stage",
             responses=problems(401, 404, 429))
    async def job_status(job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]) -> JobView:
        record = await tenant_job(request, job_id, principal)
        spent = await request.app.state.store.job_usage(job_id)
        return JobView.of(record).model_copy(update={"usage": JobUsage(tokens=spent.tokens, calls=spent.calls)})

    @app.get("/usage", response_model=TenantUsage, summary="What the tenant's jobs spent on a day, and its budget",
             responses=problems(401, 422, 429))
    async def tenant_usage(
        request: Request, principal: Annotated[Principal, Depends(caller)],
        day: Annotated[Day | None, Query(description="The UTC day (YYYY-MM-DD); default today.")] = None,
    ) -> TenantUsage:
        refuse_unknown_parameters(request, {"day"})
        if day is not None and day >= date.max:  # its end is past the last representable time
            raise RequestValidationError([{"loc": ("query", "day"), "msg": "a day before 9999-12-31",
                                           "type": "value_error"}])
        moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) if day else datetime.now(timezone.utc)
        budget, which = request.app.state.intake.budget, usage.day_of(moment)
        spent = await budget.spent(principal.tenant, which, fresh=True)
        limit = budget.limit(principal.tenant)
        return TenantUsage(tenant=principal.tenant, day=which, tokens=spent.tokens, calls=spent.calls,
                           jobs=spent.jobs, daily_token_budget=limit,
                           remaining=None if limit is None else max(0, limit - spent.tokens),
                           resets_at=usage.next_day(moment))

    streams = StreamSlots(settings.tenant_max_event_streams)

    # Not response_class=EventStream: the error answers are JSON, and FastAPI would document them
    # under the route's media type.
    @app.get("/jobs/{job_id}/events", summary="A job's progress as server-sent events, until it ends",
             responses={200: {"description": "Events `status`, `stage`, `job`, then `end` (conveyor.gateway.job_events).",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        **problems(401, 404, 429)})
    async def job_event_stream(job_id: str, request: Request,
                               principal: Annotated[Principal, Depends(caller)]) -> EventStream:
        record = await tenant_job(request, job_id, principal)
        try:
            release = streams.acquire(principal.tenant)
        except TooManyStreams as exc:
            raise refuse(429, "event_streams", str(exc), STREAM_RETRY_AFTER_SECONDS) from None
        store = request.app.state.store
        events = job_events(lambda: store.get(job_id), record, poll_seconds=settings.event_stream_poll_seconds,
                            max_seconds=settings.event_stream_max_seconds)
        return EventStream(events, release=release)

    @app.post("/jobs/{job_id}/redeliver", response_model=JobView, status_code=202,
              summary="Send an ended job's webhook again, now", responses=problems(401, 404, 409, 429))
    async def redeliver(job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]) -> JobView:
        record = await tenant_job(request, job_id, principal)
        refused = redelivery.refusal(record)
        if refused:
            raise HTTPException(409, refused)
        delivery = await redelivery.schedule(request.app.state.store, record)
        return JobView.of(record.model_copy(update={"delivery": delivery}))

    @app.delete("/jobs/{job_id}", response_model=JobView, status_code=202,
                summary="Cancel a job: every stage skips it from now on", responses=problems(401, 404, 409, 429))
    async def cancel(job_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]) -> JobView:
        store = request.app.state.store
        record = await tenant_job(request, job_id, principal)
        first = record.state != JobState.cancelled
        record = await store.cancel(job_id) or record
        if record.state != JobState.cancelled:  # completed (perhaps just now): nothing left to cancel
            raise HTTPException(409, f"job {job_id} is {record.state.value}; there is nothing left to cancel")
        # Nothing will read them again (a stage registering one later deletes it itself).
        for blob in record.blobs:
            await request.app.state.blobs.delete(blob)
        if first and record.callback_url:  # its callback hears `job.cancelled`, once
            record = record.model_copy(update={"delivery": await redelivery.schedule(store, record)})
        return JobView.of(record)

    # `{document_id:path}`: document ids may hold `/`.
    @app.get("/documents/{document_id:path}", response_model=DocumentView,
             summary="A document: its newest completed version's summary, and how many versions it has",
             responses=problems(401, 404, 429))
    async def document(document_id: str, request: Request,
                       principal: Annotated[Principal, Depends(caller)]) -> DocumentView:
        found = await tenant_document(request, document_id, principal)
        return documents.view(document_id, found)

    @app.delete("/documents/{document_id:path}", response_model=ErasureAccepted, status_code=202,
                summary="Erase a document everywhere: its versions' jobs, blobs, summaries and vectors",
                responses=problems(401, 404, 429, 503))
    async def erase_document(document_id: str, request: Request,
                             principal: Annotated[Principal, Depends(caller)]) -> ErasureAccepted:
        intake: Intake = request.app.state.intake
        # Stamped first: it erases the versions submitted until now, not one that arrives meanwhile.
        stamped = utcnow()
        found = [record for record in await tenant_document(request, document_id, principal)
                 if record.created_at <= stamped]
        erasure = documents.erasure_event(intake.stages[0], principal.tenant, document_id, principal.subject,
                                          created_at=stamped)
        await documents.withdraw(request.app.state.store, request.app.state.blobs, found)
        await intake.publish(erasure)
        answer = accepted(settings.public_url, request.scope, erasure.job_id)
        return ErasureAccepted(document_id=document_id, job_id=erasure.job_id, status_url=answer["status_url"],
                               versions=len(found))

    async def tenant_document(request: Request, document_id: str, principal: Principal) -> list[JobRecord]:
        """The document's versions, when the caller's tenant has any (404 otherwise, like a job; an
        id no submission could have given is no document either)."""
        if not DOCUMENT_ID.fullmatch(document_id):
            raise HTTPException(404, "no such document: a document id is 1 to 200 letters, digits and ._:@/+=-")
        found = await document_versions(request.app.state.store, principal.tenant, document_id)
        if not found:
            raise HTTPException(404, f"no document {document_id}")
        return found

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the broker answers")
    async def readyz(request: Request) -> JSONResponse:
        try:
            ok = await asyncio.wait_for(request.app.state.producer.client.force_metadata_update(), 3)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - any failure means not ready
            ok = False
        return JSONResponse({"status": "ready" if ok else "broker unreachable"}, status_code=200 if ok else 503)

    app.answer_directly("POST", "/submit", SubmitEndpoint(app.state, settings))
    return app



def _utc(moment: datetime | None) -> datetime | None:
    """A time from the query in UTC, within datetime's range."""
    if moment is None:
        return None
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # an offset past year 1 or 9999
        return (datetime.min if moment.year < 5000 else datetime.max).replace(tzinfo=timezone.utc)



def refuse_unknown_parameters(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([{"loc": ("query", name[:100]), "msg": "unknown query parameter",
                                       "type": "extra_forbidden"} for name in unknown[:10]])


async def _chunks(file: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await file.read(UPLOAD_CHUNK):
        yield chunk

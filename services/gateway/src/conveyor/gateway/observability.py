"""Request metrics and the request span, as plain ASGI middleware (no per-request task group)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor import metrics, tracing


class ObserveRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def capture_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        route = "unmatched"
        try:
            with tracing.request_span(method, scope["path"]) as span:
                try:
                    await self.app(scope, receive, capture_status)
                finally:
                    # The matched route template keeps span names and label sets bounded (no job ids).
                    route = getattr(scope.get("route"), "path", "unmatched")
                    if span.is_recording():
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                        span.set_attribute("http.response.status_code", status)
        finally:
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)

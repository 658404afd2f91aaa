"""A FastAPI app that answers some of its declared routes with plain ASGI endpoints, before its own
middleware stack and router, wrapped in the same middlewares the app has (see submit_route)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.gateway.answers import send_json

# (middleware class, its keyword arguments), outermost first.
Middleware = tuple[Callable[..., ASGIApp], dict[str, Any]]


class LeanFastAPI(FastAPI):
    def __init__(self, *, middleware_stack: list[Middleware], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wrapping = middleware_stack
        for cls, options in reversed(middleware_stack):  # add_middleware puts each new one outside
            self.add_middleware(cls, **options)
        self._lean: dict[tuple[str, str], tuple[APIRoute, ASGIApp]] = {}

    def answer_directly(self, method: str, path: str, endpoint: ASGIApp) -> None:
        """Serve the declared route `method path` with `endpoint`, inside the app's middlewares."""
        route = next(route for route in self.routes if isinstance(route, APIRoute)
                     and route.path == path and method in route.methods)
        wrapped: ASGIApp = _guarded(endpoint)
        for cls, options in reversed(self._wrapping):
            wrapped = cls(wrapped, **options)
        self._lean[(method, path)] = (route, wrapped)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lean = self._lean.get((scope["method"], scope["path"]))
            if lean is not None:
                scope["app"], (scope["route"], endpoint) = self, lean  # as FastAPI's router would set them
                return await endpoint(scope, receive, send)
        await super().__call__(scope, receive, send)


def _guarded(endpoint: ASGIApp) -> ASGIApp:
    """What FastAPI's outermost middleware does for its routes: an unexpected error is a 500 (and
    is raised on, for the server to log)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await endpoint(scope, receive, tracking_send)
        except Exception:
            if not started:
                await send_json(send, 500, {"detail": "internal error"})
            raise

    return guarded

"""Request body limits enforced while the body streams in, before anything is buffered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.gateway.answers import send_json


class BodyTooLarge(BaseException):
    """Raised from `receive` past the limit. A BaseException, so that the framework's body parsing,
    which turns any Exception into a 400, lets it through to this middleware's 413."""


class BodyLimitMiddleware:
    """Answer 413 once a body passes its route's limit, whether or not Content-Length was sent."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], default: int) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.default)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    return await _too_large(send, limit)
                break
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    await send_json(send, 413, {"detail": f"request body exceeds the limit of {limit} bytes"},
                    [(b"connection", b"close")])

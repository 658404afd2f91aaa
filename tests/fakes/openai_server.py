"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, with scriptable faults.

`POST /v1/chat/completions` answers with the first N sentences of the user message (N read from
the "exactly N sentence(s)" instruction) plus `usage` (a token a word); `POST /v1/embeddings`
answers each input with a vector of `EMBEDDING_SIZE` derived from its text, the same on every call. Queue replies with
`script()` to make the next requests fail (429 with Retry-After, 5xx, 400, slow or empty answers);
once the queue is empty every request succeeds, or is answered by `fallback` when one is set (a
policy such as a random storm of 429s). Every request received is recorded in `requests`, every
answer in `answers`, the `usage` of each summary in `usages`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class Reply:
    """How the server answers one request."""

    status: int = 200
    delay: float = 0.0
    retry_after: float | None = None
    content: str | None = None  # None: a summary built from the request
    usage: bool = True  # False: the answer has no `usage`, as some servers send

    @classmethod
    def ok(cls) -> Reply:
        return cls()

    @classmethod
    def rate_limited(cls, retry_after: float = 0.2) -> Reply:
        return cls(status=429, retry_after=retry_after)

    @classmethod
    def error(cls, status: int = 500) -> Reply:
        return cls(status=status)

    @classmethod
    def slow(cls, delay: float) -> Reply:
        return cls(delay=delay)

    @classmethod
    def empty(cls) -> Reply:
        return cls(content="")


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the request arrived
    body: dict[str, Any]
    headers: dict[str, str]


_SENTENCE_COUNT = re.compile(r"exactly (\d+) sentence")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class FakeOpenAI:
    """The server; `url` is the base URL to give the OpenAI client."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self.answers: list[tuple[Received, int]] = []
        self.usages: list[dict[str, int]] = []  # the `usage` of each answer that had one
        self.fallback: Callable[[Received], Reply] | None = None
        self.in_flight = 0  # requests being answered now, this one included while `fallback` decides
        self.disconnects: list[float] = []  # time.monotonic() of each client that closed a slow request
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._replies.extend(replies)

    def _next(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            self.in_flight += 1
            if self._replies:
                return self._replies.popleft()
            return self.fallback(received) if self.fallback else Reply.ok()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> JSONResponse:
            return await answer(request, _completion)

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> JSONResponse:
            return await answer(request, _embeddings)

        async def answer(request: Request, make: Callable[[dict[str, Any], str | None], dict[str, Any]]) -> JSONResponse:
            body = await request.json()
            reply = self._next(Received(time.monotonic(), body, dict(request.headers)))
            status = reply.status
            if reply.delay:
                deadline = time.monotonic() + reply.delay
                while time.monotonic() < deadline:
                    if await request.is_disconnected():  # the client gave up: say when
                        self.disconnects.append(time.monotonic())
                        status = CLIENT_CLOSED  # nobody read an answer
                        break
                    await asyncio.sleep(0.05)
            with self._lock:
                self.in_flight -= 1
                self.answers.append((Received(time.monotonic(), body, {}), status))
            if reply.status != 200:
                headers = {} if reply.retry_after is None else {"retry-after": str(reply.retry_after)}
                error = {"message": f"scripted HTTP {reply.status}", "type": "test_error", "code": None}
                return JSONResponse({"error": error}, status_code=reply.status, headers=headers)
            completion = make(body, reply.content)
            if reply.usage:
                with self._lock:
                    self.usages.append(completion["usage"])
            else:
                del completion["usage"]
            return JSONResponse(completion)

        return app

    def start(self, port: int = 0) -> None:
        """Listen on `port` (0: a free one); after `stop()`, `start(server.port)` comes back on the
        same address, so a client sees connections refused in between."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=0.5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


EMBEDDING_SIZE = 8


CLIENT_CLOSED = 499  # recorded for a slow request whose client went away before its answer


def embedding_of(text: str) -> list[float]:
    """The fake model's vector of `text`: unit length, from its SHA-256."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [digest[i] - 127.5 for i in range(EMBEDDING_SIZE)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def _embeddings(body: dict[str, Any], content: str | None) -> dict[str, Any]:
    texts = body.get("input", [])
    texts = [texts] if isinstance(texts, str) else texts
    tokens = sum(len(str(text).split()) for text in texts)
    return {
        "object": "list",
        "model": body.get("model", "fake-embedding-model"),
        "data": [{"object": "embedding", "index": i, "embedding": embedding_of(str(text))} for i, text in enumerate(texts)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _completion(body: dict[str, Any], content: str | None) -> dict[str, Any]:
    messages = body.get("messages", [])
    system = " ".join(m["content"] for m in messages if m.get("role") == "system")
    user = " ".join(m["content"] for m in messages if m.get("role") == "user")
    match = _SENTENCE_COUNT.search(system)
    count = int(match.group(1)) if match else 3
    if content is None:
        content = " ".join(_SENTENCE_END.split(user.strip())[:count])
    prompt_tokens = len(f"{system} {user}".split())
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """A running fake OpenAI-compatible server, stopped after the test."""
    server = FakeOpenAI()
    server.start()
    try:
        yield server
    finally:
        server.stop()

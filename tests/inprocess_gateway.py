"""The gateway app in this process (httpx's ASGI transport) on the real broker, for API tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from conveyor.gateway.app import create_app
from conveyor.settings import Settings

TEXT = "Rivers changed over the decades. Scientists measured the water every year."


def settings_for(broker: str, home: Path, **overrides: object) -> Settings:
    return Settings(**{"bootstrap_servers": broker, "topic_prefix": f"au{uuid.uuid4().hex[:6]}", "home": home,
                       "lag_interval_seconds": 0, "partitions": 1, **overrides})


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            yield client


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


async def submit(client: httpx.AsyncClient, key: str, **extra: object) -> httpx.Response:
    return await client.post("/submit", json={"user_id": "u1", "content": TEXT, **extra}, headers=bearer(key))

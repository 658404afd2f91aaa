"""The gateway's operations port (`CONVEYOR_METRICS_PORT`): Prometheus metrics and the API docs.

Kept off the public port: the chart exposes it only inside the cluster (the ServiceMonitor scrapes
it; the NetworkPolicy admits Prometheus), and `conveyor up` binds it to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html

from conveyor.health import serve_probes
from conveyor.settings import Settings


async def serve_operations(app: FastAPI, settings: Settings) -> asyncio.base_events.Server:
    pages = {}
    if settings.api_docs:
        pages["/openapi.json"] = lambda: ("application/json", json.dumps(app.openapi()).encode())
        pages["/docs"] = lambda: ("text/html; charset=utf-8", get_swagger_ui_html(
            openapi_url="/openapi.json", title="Conveyor gateway API").body)
    return await serve_probes(settings.metrics_host, settings.metrics_port, ready=lambda: True, pages=pages)

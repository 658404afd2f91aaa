"""A tiny HTTP endpoint for workers: /healthz (alive), /readyz (consuming), /metrics (Prometheus).

/healthz answers 503 when `alive()` says the worker is wedged, so Kubernetes restarts it.

Plain asyncio, so a worker needs no web framework for its probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def _always() -> bool:
    return True


async def serve_probes(host: str, port: int, *, ready: Callable[[], bool],
                       alive: Callable[[], bool] = _always,
                       pages: Mapping[str, Callable[[], tuple[str, bytes]]] | None = None) -> asyncio.base_events.Server:
    """`pages`: more paths, each answered with the (content type, body) its function gives."""
    pages = pages or {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path == "/healthz":
                is_alive = alive()
                status = "200 OK" if is_alive else "503 Service Unavailable"
                ctype, body = "text/plain", b"ok\n" if is_alive else b"stalled: no progress while work is running\n"
            elif path == "/readyz":
                is_ready = ready()
                status = "200 OK" if is_ready else "503 Service Unavailable"
                ctype, body = "text/plain", b"ready\n" if is_ready else b"not ready\n"
            elif path in pages:
                status, (ctype, body) = "200 OK", pages[path]()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1") + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)

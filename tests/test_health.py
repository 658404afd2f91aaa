"""A worker's probe endpoint answers what the worker says of itself."""

from __future__ import annotations

import httpx

from conveyor.cli.embedded_broker import free_port
from conveyor.health import serve_probes


async def test_healthz_fails_when_the_worker_says_it_is_wedged() -> None:
    state = {"alive": True}
    port = free_port()
    server = await serve_probes("127.0.0.1", port, ready=lambda: True, alive=lambda: state["alive"])
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            state["alive"] = False
            answer = await client.get("/healthz")
            assert answer.status_code == 503 and b"no progress" in answer.content
            assert (await client.get("/readyz")).status_code == 200
    finally:
        server.close()
        await server.wait_closed()

"""A real HTTP server that receives Conveyor's webhooks, verifies them as any Standard Webhooks
receiver would (the `standardwebhooks` library), and counts deliveries and their ids."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

from conveyor.webhook_keys import master_secrets, tenant_secret


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a real server's listen backlog, not socketserver's 5


class WebhookReceiver:
    def __init__(self, secret: str, *, tenant: str = "default", master: int = 0) -> None:
        # A receiver is given its tenant's secret (derived from the pipeline's master secret `secret`).
        self.verifier = Webhook(tenant_secret(master_secrets(secret)[master], tenant))
        self.failing = False
        self.deliveries: Counter[str] = Counter()
        self.ids: dict[str, set[str]] = {}
        self.bodies: dict[str, list[dict]] = {}  # job id -> every verified body, in arrival order
        self.bad_signatures = 0
        self.hosts: list[str] = []  # the Host header of every POST
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                expected_length = int(self.headers["content-length"])
                body = self.rfile.read(expected_length)
                if len(body) < expected_length:
                    return  # the sender died mid-request (SIGKILL): a dropped connection, not a delivery
                with receiver._lock:
                    receiver.attempts += 1
                    receiver.hosts.append(self.headers["host"])
                    if receiver.failing:
                        self.send_response(503)
                        self.end_headers()
                        return
                    try:
                        receiver.verifier.verify(body, dict(self.headers.items()))
                    except WebhookVerificationError:
                        receiver.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    job_id = json.loads(body)["job_id"]
                    receiver.bodies.setdefault(job_id, []).append(json.loads(body))
                    receiver.deliveries[job_id] += 1
                    receiver.arrivals.setdefault(job_id, time.time())
                    receiver.ids.setdefault(job_id, set()).add(self.headers["webhook-id"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._lock = threading.Lock()
        self._handler = Handler
        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.arrivals: dict[str, float] = {}  # job id -> time.time() of its first delivery
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def refuse(self) -> None:
        """Stop listening: connections to the port are refused until `listen()`."""
        self._server.shutdown()
        self._server.server_close()

    def listen(self) -> None:
        """Listen again, on the same port."""
        self._server = _Server(("127.0.0.1", self.port), self._handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

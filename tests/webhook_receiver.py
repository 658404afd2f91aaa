"""A real HTTP server that receives Conveyor's webhooks, verifies signatures and counts deliveries."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conveyor.notifier.webhooks import signature


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.failing = False
        self.deliveries: Counter[str] = Counter()
        self.bad_signatures = 0
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
                    if receiver.failing:
                        self.send_response(503)
                        self.end_headers()
                        return
                    expected = signature(receiver.secret, self.headers["x-conveyor-timestamp"], body)
                    if expected != self.headers["x-conveyor-signature"]:
                        receiver.bad_signatures += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                    receiver.deliveries[json.loads(body)["job_id"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

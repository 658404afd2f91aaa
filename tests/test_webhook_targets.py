"""Webhooks that cannot be abused: signed with the job's tenant's secret (two during a rotation),
sent only to global addresses, to the address that was checked, without following redirects and
reading a bounded answer within one deadline."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conveyor.errors import PermanentError
from conveyor.notifier.webhooks import Refused, Unanswered, check_target, deliver, signers
from conveyor.webhook_keys import master_secrets, tenant_secret, tenant_secrets
from webhook_receiver import WebhookReceiver

MASTER = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
BODY = json.dumps({"job_id": "j1", "status": "completed"}).encode()


def test_each_tenant_has_its_own_secret_derived_from_the_master() -> None:
    masters = master_secrets(MASTER)
    acme, globex = tenant_secret(masters[0], "acme"), tenant_secret(masters[0], "globex")
    assert acme.startswith("whsec_") and acme != globex
    assert tenant_secret(master_secrets("another master")[0], "acme") != acme
    assert tenant_secrets(master_secrets(f"new-master,{MASTER}"), "acme")[1] == acme  # the old one stays valid


@pytest.mark.parametrize("value", ["", " , ", "whsec_not-base64!"])
def test_a_master_secret_that_is_no_secret_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        master_secrets(value)


async def test_a_webhook_verifies_with_its_tenants_secret_only() -> None:
    with WebhookReceiver(MASTER, tenant="acme") as acme, WebhookReceiver(MASTER, tenant="globex") as globex:
        async with httpx.AsyncClient() as client:
            await deliver(client, acme.url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1")
            with pytest.raises(Refused):  # globex's receiver answers 401 to a signature not made with its secret
                await deliver(client, globex.url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1")
    assert acme.deliveries["j1"] == 1 and acme.bad_signatures == 0
    assert globex.deliveries["j1"] == 0 and globex.bad_signatures == 1


async def test_during_a_rotation_receivers_with_the_old_or_the_new_secret_both_verify() -> None:
    rotating = f"whsec_{'A' * 32},{MASTER}"  # new master first, the old one still listed
    with WebhookReceiver(rotating, tenant="acme", master=0) as new, \
            WebhookReceiver(rotating, tenant="acme", master=1) as old:
        async with httpx.AsyncClient() as client:
            for receiver in (new, old):
                await deliver(client, receiver.url, BODY, webhooks=signers(rotating, "acme"), delivery_id="j1")
    assert new.deliveries["j1"] == old.deliveries["j1"] == 1
    assert new.bad_signatures == old.bad_signatures == 0


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/h", "http://10.1.2.3/h", "http://192.168.0.1/h", "http://172.16.0.1/h",
    "http://100.64.0.1/h",  # shared address space (carrier-grade NAT): not global
    "http://169.254.169.254/latest/meta-data",  # cloud metadata, link-local
    "http://[::1]/h", "http://[::ffff:127.0.0.1]/h", "http://[fd00::1]/h", "http://0.0.0.0/h",
    "http://localhost:8080/h", "http://224.0.0.1/h",
])
async def test_callbacks_to_addresses_that_are_not_global_are_refused(url: str) -> None:
    with pytest.raises(PermanentError, match="not a global address"):
        await check_target(url, allow_private=False)


async def test_a_global_address_is_returned_to_connect_to() -> None:
    assert await check_target("http://8.8.8.8:8080/h", allow_private=False) == "8.8.8.8"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com/"])
async def test_only_http_callbacks_are_allowed_even_when_private_ones_are(url: str) -> None:
    with pytest.raises(PermanentError):
        await check_target(url, allow_private=True)


async def test_the_post_goes_to_the_checked_address_not_a_second_lookup() -> None:
    """The URL names a host that does not resolve at all: the POST still reaches the address that
    was checked, with the URL's name in Host, so no later DNS answer can redirect it."""
    with WebhookReceiver(MASTER, tenant="acme") as receiver:
        url = f"http://hooks.conveyor-test.invalid:{receiver.port}/hook"
        async with httpx.AsyncClient() as client:
            await deliver(client, url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1", address="127.0.0.1")
    assert receiver.deliveries["j1"] == 1
    assert receiver.hosts == [f"hooks.conveyor-test.invalid:{receiver.port}"]


class Misbehaving:
    """A receiver that redirects, answers without end, or trickles its answer."""

    def __init__(self, behaviour: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                if behaviour == "redirect":
                    self.send_response(302)
                    self.send_header("location", "http://169.254.169.254/latest/meta-data")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-length", str(10 ** 10))
                self.end_headers()
                try:
                    while True:  # 10 GB announced; sent as fast as read (endless) or a byte a second
                        self.wfile.write(b"x" * 65536 if behaviour == "endless" else b"x")
                        self.wfile.flush()
                        if behaviour == "trickle":
                            time.sleep(1)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_redirect_is_not_followed_and_refuses_the_delivery() -> None:
    server = Misbehaving("redirect")
    try:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            with pytest.raises(Refused) as refused:
                await deliver(client, server.url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1")
    finally:
        server.close()
    assert refused.value.status == 302


async def test_an_endless_answer_is_read_only_up_to_the_cap() -> None:
    server = Misbehaving("endless")
    try:
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            await deliver(client, server.url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1",
                          max_response_bytes=1_000_000)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 5  # a 10 GB answer was not read


async def test_a_trickling_answer_is_cut_at_the_deadline() -> None:
    server = Misbehaving("trickle")
    try:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            with pytest.raises(Unanswered):
                await deliver(client, server.url, BODY, webhooks=signers(MASTER, "acme"), delivery_id="j1",
                              timeout=2)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert 1.5 < elapsed < 5


def test_a_receiver_library_rejects_a_signature_made_for_another_tenant() -> None:
    """The same check as the receivers above, without the network: Standard Webhooks' own verify."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    header = signers(MASTER, "acme")[0].sign("j1", now, BODY.decode())
    headers = {"webhook-id": "j1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": header}
    Webhook(tenant_secret(master_secrets(MASTER)[0], "acme")).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(tenant_secret(master_secrets(MASTER)[0], "globex")).verify(BODY, headers)


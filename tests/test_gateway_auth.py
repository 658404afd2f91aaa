"""The gateway's credentials, tenants and admission, in process on the real broker: every API route
needs an API key or an OIDC token, a job is its tenant's only, and floods, quotas and a backed-up
pipeline are answered with 429/503 and Retry-After."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conveyor.credentials import add_key, revoke_key
from inprocess_gateway import TEXT, bearer, gateway, settings_for, submit

@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic dTpw", "Bearer cvk_nope_nope",
                                           "Bearer cvk_000000000000_" + "A" * 43, "Bearer " + "x" * 9000,
                                           "Bearer not.a.jwt"])
async def test_requests_without_a_valid_credential_are_401_on_every_route(broker: str, tmp_path: Path,
                                                                         authorization: str | None) -> None:
    add_key(tmp_path / "api-keys.json", "acme")
    headers = {"authorization": authorization} if authorization is not None else {}
    async with gateway(settings_for(broker, tmp_path)) as client:
        answers = [
            await client.post("/submit", json={"user_id": "u1", "content": TEXT}, headers=headers),
            await client.post("/upload", data={"user_id": "u1"}, files={"file": ("a.txt", b"Text.", "text/plain")},
                              headers=headers),
            await client.post("/submit", content=b"{not json", headers={**headers, "content-type": "application/json"}),
            await client.get("/jobs/anything", headers=headers),
            await client.get("/jobs", headers=headers),
            await client.delete("/jobs/anything", headers=headers),
            await client.post("/jobs/redeliver", json={"since": "2026-01-01T00:00:00Z"}, headers=headers),
            await client.post("/jobs/anything/redeliver", headers=headers),
            await client.get("/jobs/anything/events", headers=headers),
            await client.get("/usage", headers=headers),
            await client.get("/documents/handbook/intro", headers=headers),
            await client.delete("/documents/handbook/intro", headers=headers),
            await client.get("/no-such-route", headers=headers),
        ]
        probes = [await client.get("/healthz"), await client.get("/readyz")]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.headers["www-authenticate"] == "Bearer" for a in answers)
    assert len({a.text for a in answers}) == 1  # the same answer whatever was wrong
    assert [p.status_code for p in probes] == [200, 200]


async def test_the_tenant_comes_from_the_key_and_other_tenants_see_404(broker: str, tmp_path: Path) -> None:
    acme, _ = add_key(tmp_path / "api-keys.json", "acme")
    globex, _ = add_key(tmp_path / "api-keys.json", "globex")
    async with gateway(settings_for(broker, tmp_path)) as client:
        accepted = await submit(client, acme)
        assert accepted.status_code == 202
        job_id = accepted.json()["job_id"]
        own = await client.get(f"/jobs/{job_id}", headers=bearer(acme))
        foreign = await client.get(f"/jobs/{job_id}", headers=bearer(globex))
        missing = await client.get("/jobs/0123456789abcdef", headers=bearer(globex))
        foreign_redeliver = await client.post(f"/jobs/{job_id}/redeliver", headers=bearer(globex))
        foreign_events = await client.get(f"/jobs/{job_id}/events", headers=bearer(globex))
        smuggled = await submit(client, globex, tenant="acme")
    assert own.status_code == 200
    assert own.json()["tenant"] == "acme" and own.json()["user_id"] == "u1"  # user_id: the submitter's label
    assert foreign.status_code == missing.status_code == foreign_redeliver.status_code == foreign_events.status_code == 404
    assert foreign.json()["detail"] == f"no job {job_id}" and missing.json()["detail"] == "no job 0123456789abcdef"
    assert smuggled.status_code == 422  # a body cannot name a tenant


async def test_a_tenant_lists_its_own_jobs_newest_first_by_state_and_page(broker: str, tmp_path: Path) -> None:
    acme, _ = add_key(tmp_path / "api-keys.json", "acme")
    globex, _ = add_key(tmp_path / "api-keys.json", "globex")
    async with gateway(settings_for(broker, tmp_path)) as client:
        ours = [(await submit(client, acme)).json()["job_id"] for _ in range(5)]
        theirs = (await submit(client, globex)).json()["job_id"]
        first = (await client.get("/jobs", params={"limit": 3}, headers=bearer(acme))).json()
        second = (await client.get("/jobs", params={"limit": 3, "before": first["next"]}, headers=bearer(acme))).json()
        queued = await client.get("/jobs", params={"state": "queued", "since": "2000-01-01T00:00:00Z"},
                                  headers=bearer(acme))
        failed = await client.get("/jobs", params={"state": "failed"}, headers=bearer(acme))
        bad = [await client.get("/jobs", params=params, headers=bearer(acme)) for params in (
            {"state": "lost"}, {"limit": 0}, {"before": "not a cursor"}, {"since": "yesterday"}, {"since": "0.5"},
            {"since": "2026-12-03"}, {"stat": "failed"})]
    listed = [job["job_id"] for job in first["jobs"] + second["jobs"]]
    assert listed == list(reversed(ours)) and theirs not in listed  # newest first, the tenant's only
    assert second["next"] is None
    assert [job["job_id"] for job in queued.json()["jobs"]] == list(reversed(ours))
    assert failed.json() == {"jobs": [], "next": None}
    assert [answer.status_code for answer in bad] == [422] * 7  # a misspelt filter too: it must not list all


async def test_a_revoked_key_stops_working_without_a_restart(broker: str, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.json"
    key, entry = add_key(keys, "acme")
    async with gateway(settings_for(broker, tmp_path)) as client:
        assert (await client.get("/jobs/x", headers=bearer(key))).status_code == 404
        revoke_key(keys, entry.id)
        await asyncio.sleep(1.1)  # the key file is looked at once a second
        assert (await client.get("/jobs/x", headers=bearer(key))).status_code == 401
        later, _ = add_key(keys, "acme")
        await asyncio.sleep(1.1)
        assert (await client.get("/jobs/x", headers=bearer(later))).status_code == 404


async def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not(broker: str, tmp_path: Path) -> None:
    acme, _ = add_key(tmp_path / "api-keys.json", "acme")
    globex, _ = add_key(tmp_path / "api-keys.json", "globex")
    async with gateway(settings_for(broker, tmp_path, tenant_requests_per_second=2)) as client:
        codes = [(await client.get("/jobs/x", headers=bearer(acme))).status_code for _ in range(8)]
        refused = await client.get("/jobs/x", headers=bearer(acme))
        other = await client.get("/jobs/x", headers=bearer(globex))
    assert codes[:4] == [404] * 4 and 429 in codes[4:]  # a burst of twice the rate, then refused
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 404


async def test_a_tenant_at_its_active_job_quota_gets_429_until_jobs_finish(broker: str, tmp_path: Path) -> None:
    acme, _ = add_key(tmp_path / "api-keys.json", "acme")
    globex, _ = add_key(tmp_path / "api-keys.json", "globex")
    settings = settings_for(broker, tmp_path, tenant_max_active_jobs=2)
    async with gateway(settings) as client:
        first = [await submit(client, acme) for _ in range(2)]
        over = await submit(client, acme)
        other = await submit(client, globex)
        # One finishes (as the notifier would record it): after the count's refresh there is room again.
        from conveyor.stores import open_job_store

        store = open_job_store(settings)
        await store.complete(first[0].json()["job_id"], summary="done")
        await store.close()
        await asyncio.sleep(1.1)
        again = await submit(client, acme)
    assert [a.status_code for a in first] == [202, 202]
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1 and "limit is 2" in over.json()["detail"]
    assert other.status_code == 202
    assert again.status_code == 202


async def test_a_backed_up_pipeline_gets_503_with_retry_after(broker: str, tmp_path: Path) -> None:
    """No workers run: the extractor's lag grows with each job, and past the bound the gateway
    stops accepting work (as it measures the lag)."""
    key, _ = add_key(tmp_path / "api-keys.json", "acme")
    settings = settings_for(broker, tmp_path, max_pipeline_lag=3, lag_interval_seconds=0.2)
    async with gateway(settings) as client:
        accepted = [await submit(client, key) for _ in range(4)]
        deadline = time.monotonic() + 20
        answer = await submit(client, key)
        while answer.status_code == 202 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            answer = await submit(client, key)
        status = await client.get(f"/jobs/{accepted[0].json()['job_id']}", headers=bearer(key))
    assert all(a.status_code == 202 for a in accepted)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1 and "records behind" in answer.json()["detail"]
    assert status.status_code == 200  # reads still work while new work is refused


# --- OIDC ---------------------------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://id.example.test", "conveyor"


class JwksServer:
    def __init__(self, jwks: dict) -> None:
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "iat": now, "exp": now + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"})


def hs256(secret: bytes, claims: dict) -> str:
    """A token signed with HMAC by hand (PyJWT itself refuses an asymmetric key as an HMAC secret)."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = part(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{header}.{part(json.dumps(claims).encode())}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


async def test_oidc_tokens_are_verified_and_name_the_tenant(broker: str, tmp_path: Path, signing_key) -> None:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwks = JwksServer({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    settings = settings_for(broker, tmp_path, oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks.url)
    refused = {
        "wrong audience": token(signing_key, aud="someone-else"),
        "wrong issuer": token(signing_key, iss="https://evil.example.test"),
        "expired": token(signing_key, exp=int(time.time()) - 3600),
        "no expiry": token(signing_key, exp=None),
        "another key": token(other_key),
        "no tenant": token(signing_key, tenant=None),
        "bad tenant": token(signing_key, tenant="../ACME"),
        "alg none": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "tenant": "acme", "exp": int(time.time()) + 300},
                               None, algorithm="none"),
        # The public key used as an HMAC secret: refused, only asymmetric algorithms are accepted.
        "key confusion": hs256(public_pem, {"iss": ISSUER, "aud": AUDIENCE, "tenant": "acme",
                                            "exp": int(time.time()) + 300}),
    }
    try:
        async with gateway(settings) as client:
            accepted = await submit(client, token(signing_key))
            job_id = accepted.json()["job_id"]
            mine = await client.get(f"/jobs/{job_id}", headers=bearer(token(signing_key)))
            theirs = await client.get(f"/jobs/{job_id}", headers=bearer(token(signing_key, tenant="globex")))
            answers = {name: (await submit(client, credential)).status_code for name, credential in refused.items()}
    finally:
        jwks.close()
    assert accepted.status_code == 202 and mine.json()["tenant"] == "acme"
    assert theirs.status_code == 404
    assert answers == {name: 401 for name in refused}


@pytest.mark.parametrize("docs", [True, False])
async def test_the_operations_port_serves_metrics_and_docs_only_when_asked(broker: str, tmp_path: Path,
                                                                          docs: bool) -> None:
    from conveyor.cli.embedded_broker import free_port

    port = free_port()
    async with gateway(settings_for(broker, tmp_path, metrics_port=port, metrics_host="127.0.0.1", api_docs=docs)):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as operations:
            metrics_page = await operations.get("/metrics")
            schema = await operations.get("/openapi.json")
    assert metrics_page.status_code == 200 and "conveyor_http_requests_total" in metrics_page.text
    assert schema.status_code == (200 if docs else 404)
    if docs:
        assert schema.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"

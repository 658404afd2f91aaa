"""Claim-check blob stores: the local folder and S3 (against a real S3-compatible server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from conveyor.errors import PermanentError
from conveyor.events import BlobRef
from conveyor.cli.embedded_broker import free_port
from conveyor.stores.blobs import BlobStore, BlobTooLarge, FileBlobStore
from conveyor.stores.s3_blobs import S3BlobStore


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"b{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return S3BlobStore(bucket=bucket, endpoint_url=endpoint)


async def chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_streamed_blob_round_trips_with_size_and_sha256(store: BlobStore) -> None:
    data = os.urandom(19 * 1024 * 1024 + 123)  # several multipart parts on S3

    ref = await store.put_stream(chunks(data))

    assert ref.size == len(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.get(ref) == data
    await store.delete(ref)
    with pytest.raises(PermanentError, match="missing"):
        await store.get(ref)


async def test_size_limit_stops_the_stream(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge):
        await store.put_stream(chunks(b"x" * 3000, size=1000), max_bytes=2500)


async def test_tampered_reference_is_refused(store: BlobStore) -> None:
    ref = await store.put(b"original bytes")
    forged = BlobRef(uri=ref.uri, size=ref.size, sha256="0" * 64)
    with pytest.raises(PermanentError, match="does not match"):
        await store.get(forged)


async def test_reference_outside_the_store_is_refused(store: BlobStore) -> None:
    outside = BlobRef(uri="file:///etc/passwd" if store.scheme == "file" else "s3://other-bucket/x",
                      size=1, sha256="0" * 64)
    with pytest.raises(PermanentError, match="outside"):
        await store.get(outside)


async def test_an_unreachable_s3_is_a_dependency_outage_and_its_breaker_opens() -> None:
    from botocore.config import Config

    from conveyor.breakers import Breaker, DependencyUnavailable

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = boto3.client("s3", endpoint_url=dead, config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    breaker = Breaker("blob store s3://b", failures=2, probe_seconds=30, probe_max_seconds=30)
    store = S3BlobStore(bucket="b", client=client, breaker=breaker)
    ref = BlobRef(uri="s3://b/blobs/x", size=1, sha256="0" * 64)

    for _ in range(2):
        with pytest.raises(DependencyUnavailable, match="EndpointConnectionError") as raised:
            await store.get(ref)
        assert not raised.value.charge
    assert breaker.is_open
    with pytest.raises(DependencyUnavailable, match="circuit is open"):  # no call is made now
        await store.put(b"data")


async def test_the_gateway_answers_503_with_retry_after_while_the_blob_store_is_down(broker: str, tmp_path) -> None:
    import httpx

    from conveyor.credentials import add_key
    from conveyor.gateway.app import create_app
    from conveyor.settings import Settings

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(bootstrap_servers=broker, topic_prefix=f"bl{os.urandom(3).hex()}", home=tmp_path,
                        blob_store="s3", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", claim_check_bytes=10,
                        lag_interval_seconds=0)
    key, _ = add_key(tmp_path / "api-keys.json", "default")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway",
                                     headers={"authorization": f"Bearer {key}"}) as client:
            answer = await client.post("/submit", json={"user_id": "u1", "content": "a document too big to inline"})

    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) >= 1
    assert "blob store s3://conveyor is unavailable" in answer.json()["detail"]

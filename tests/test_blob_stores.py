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

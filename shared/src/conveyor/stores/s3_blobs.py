"""Blobs on S3-compatible storage (AWS S3, MinIO, Ceph): the claim-check store for clusters.

Uploads stream as multipart parts, so a large document never sits in memory whole. boto3 is
synchronous; its calls run in threads. Credentials come from boto3's usual chain (env vars,
IRSA/workload identity, instance profile).

Every call goes through the store's circuit breaker: S3 unreachable, timing out or answering 5xx
is `DependencyUnavailable`, which a stage waits out without charging the record.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterable
from typing import Any

from conveyor.breakers import Breaker, DependencyFailure
from conveyor.errors import PermanentError
from conveyor.events import BlobRef
from conveyor.stores.blobs import BlobStore, BlobTooLarge

PART_BYTES = 8 * 1024 * 1024  # S3 needs parts of at least 5 MiB, except the last


class S3BlobStore(BlobStore):
    scheme = "s3"

    def __init__(self, *, bucket: str, endpoint_url: str | None = None, prefix: str = "blobs/",
                 client: Any | None = None, breaker: Breaker | None = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError("CONVEYOR_BLOB_STORE=s3 needs boto3: pip install 'conveyor[s3]'") from exc
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.breaker = breaker or Breaker(f"blob store s3://{bucket}", failures=16, probe_seconds=1,
                                          probe_max_seconds=30)

    async def _s3(self, operation: Any, **arguments: Any) -> Any:
        """One S3 call in a thread, through the breaker; S3's own failures become DependencyFailure."""
        from botocore.exceptions import BotoCoreError, ClientError

        async with self.breaker.call():
            try:
                return await asyncio.to_thread(operation, **arguments)
            except BotoCoreError as exc:  # unreachable, timed out, DNS
                raise DependencyFailure(f"{self.breaker.name}: {type(exc).__name__}") from exc
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") == "SlowDown":
                    raise DependencyFailure(f"{self.breaker.name} answered HTTP {status}") from exc
                raise

    async def put_stream(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobRef:
        key = f"{self.prefix}{uuid.uuid4().hex}"
        upload = await self._s3(self.client.create_multipart_upload, Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        digest, size, parts, buffer = hashlib.sha256(), 0, [], bytearray()

        async def send_part() -> None:
            number = len(parts) + 1
            answer = await self._s3(self.client.upload_part, Bucket=self.bucket, Key=key,
                                    UploadId=upload_id, PartNumber=number, Body=bytes(buffer))
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLarge(f"payload exceeds {max_bytes} bytes")
                digest.update(chunk)
                buffer.extend(chunk)
                if len(buffer) >= PART_BYTES:
                    await send_part()
            if buffer or not parts:
                await send_part()
            await self._s3(self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                await self._s3(self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the upload's own error is the one to report
                pass  # a lifecycle rule (AbortIncompleteMultipartUpload), where set, removes the leftover parts
            raise
        return BlobRef(uri=f"s3://{self.bucket}/{key}", size=size, sha256=digest.hexdigest())

    def _key(self, ref: BlobRef) -> str:
        bucket, _, key = ref.uri.removeprefix("s3://").partition("/")
        if bucket != self.bucket or not key.startswith(self.prefix):
            raise PermanentError(f"blob {ref.uri} is outside s3://{self.bucket}/{self.prefix}")
        return key

    async def _read(self, ref: BlobRef) -> bytes:
        key = self._key(ref)
        try:
            answer = await self._s3(self.client.get_object, Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(ref.uri) from exc
        return await self._s3(answer["Body"].read)

    async def delete(self, ref: BlobRef) -> None:
        await self._s3(self.client.delete_object, Bucket=self.bucket, Key=self._key(ref))

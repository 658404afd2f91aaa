"""Open the stores Settings ask for."""

from __future__ import annotations

from conveyor.settings import Settings
from conveyor.stores.base import JobStore
from conveyor.stores.blobs import BlobStore, FileBlobStore


def open_job_store(settings: Settings) -> JobStore:
    if settings.status_store == "redis":
        from conveyor.stores.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url, prefix=settings.redis_prefix, ttl_seconds=settings.job_ttl_seconds)
    from conveyor.stores.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.resolved_sqlite_path(), ttl_seconds=settings.job_ttl_seconds)


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_store == "s3":
        from conveyor.stores.s3_blobs import S3BlobStore

        from conveyor.breakers import Breakers

        return S3BlobStore(bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, prefix=settings.s3_prefix,
                           breaker=Breakers.from_settings(settings)[f"blob store s3://{settings.s3_bucket}"])
    return FileBlobStore(settings.resolved_blob_dir())

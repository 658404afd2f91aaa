"""Job status store and blob store: interfaces and their backends."""

from conveyor.stores.base import JobRecord, JobState, JobStore, StageProgress, StageState
from conveyor.stores.factory import open_blob_store, open_job_store

__all__ = [
    "JobRecord",
    "JobState",
    "JobStore",
    "StageProgress",
    "StageState",
    "open_blob_store",
    "open_job_store",
]

"""Schemathesis against the live gateway (a real process on the real broker), authenticated, with
all its checks: no 5xx, every answer as the OpenAPI document describes it, invalid input refused
with a 4xx and valid input accepted."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from hypothesis import HealthCheck, settings

from conveyor.gateway.app import create_app
from conveyor.gateway.idempotency import KEY_PATTERN
from conveyor.settings import Settings
from pipeline_harness import Pipeline

pytestmark = pytest.mark.slow

# The schema of the gateway as built (the same document the operations port serves).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
# Schema-valid but refused by meaning, not shape: an upload's bytes must be a document (415 for
# random bytes; real documents are accepted in test_pipeline_e2e), and a job or document that does
# not exist cannot have its webhook re-sent, be cancelled, followed, read or erased (404/409).
ACCEPTANCE_NOT_EXPECTED = {("POST", "/upload"), ("POST", "/jobs/{job_id}/redeliver"), ("DELETE", "/jobs/{job_id}"),
                           ("GET", "/jobs/{job_id}/events"), ("GET", "/documents/{document_id}"),
                           ("DELETE", "/documents/{document_id}")}


@pytest.fixture(scope="module")
def gateway(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    # Limits high enough that fuzzing does not trip them: what is checked is each answer's shape.
    running = Pipeline(broker, home, extra_env={"CONVEYOR_TENANT_REQUESTS_PER_SECOND": "100000",
                                                 "CONVEYOR_TENANT_MAX_ACTIVE_JOBS": "1000000"})
    running.start_gateway()
    yield running
    running.stop_all()


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_schema_under_fuzzing(case: schemathesis.Case, gateway: Pipeline) -> None:
    # Named as the security scheme names it, so the ignored-auth check can take it away again.
    excluded = [positive_data_acceptance] if (case.method, case.path) in ACCEPTANCE_NOT_EXPECTED else []
    if not all(_sent(value) for value in (case.query or {}).values()):
        # A query parameter whose value is null (or an empty list of values) is not sent at all:
        # the request that reaches the gateway is not the schema-violating one the case describes.
        excluded.append(negative_data_rejection)
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.match(KEY_PATTERN, key):
        # A valid key is made unique: the generator repeats values across unrelated bodies, and a
        # repeated key with another body is a 422 by design (tested in test_idempotency).
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    case.call_and_validate(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.api_key}"},
                           excluded_checks=excluded)


def _sent(value: object) -> bool:
    """Whether a query value appears in the request at all (None and [] do not)."""
    if isinstance(value, list):
        return any(_sent(item) for item in value)
    return value is not None


@schema.exclude(path_regex=r"^/(healthz|readyz)$").parametrize()  # the probes are open by design
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_refuses_requests_without_a_credential(case: schemathesis.Case, gateway: Pipeline) -> None:
    response = case.call(base_url=gateway.url)
    assert response.status_code == 401, (case.method, case.path, response.text[:200])

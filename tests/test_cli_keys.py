"""`conveyor keys` and `conveyor webhook-secret`, as a user runs them: keys are shown once and
stored hashed, revoked keys are marked, a tenant's webhook secret is the one the notifier signs with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conveyor.credentials import KeyRing, read_keys
from conveyor.webhook_keys import master_secrets, tenant_secret
from pipeline_harness import Pipeline


def conveyor(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**base, "CONVEYOR_HOME": str(home), **(env or {})})


def test_keys_are_created_once_listed_without_the_key_and_revoked(tmp_path: Path) -> None:
    created = conveyor(tmp_path, "keys", "create", "--tenant", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cvk_") and "shown only now" in created.stderr
    keys_file = tmp_path / "api-keys.json"
    assert key not in keys_file.read_text() and keys_file.stat().st_mode & 0o777 == 0o600
    assert KeyRing(keys_file).verify(key).tenant == "acme"

    listed = [json.loads(line) for line in conveyor(tmp_path, "keys", "list").stdout.splitlines()]
    assert [(k["tenant"], k["name"], k["state"]) for k in listed] == [("acme", "ci", "active")]
    assert key not in json.dumps(listed)

    revoked = conveyor(tmp_path, "keys", "revoke", listed[0]["id"])
    assert revoked.returncode == 0
    assert read_keys(keys_file)[0].revoked_at is not None
    assert KeyRing(keys_file).verify(key) is None
    assert conveyor(tmp_path, "keys", "list").stdout.count("revoked") == 1


def test_bad_input_to_keys_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    bad_tenant = conveyor(tmp_path, "keys", "create", "--tenant", "Not A Tenant")
    unknown = conveyor(tmp_path, "keys", "revoke", "nosuchkey")
    (tmp_path / "broken.json").write_text("{not json")
    broken = conveyor(tmp_path, "keys", "list", "--file", str(tmp_path / "broken.json"))
    for result, code in ((bad_tenant, 2), (unknown, 1), (broken, 2)):
        assert result.returncode == code
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_webhook_secret_prints_the_tenants_derived_secrets_current_first(tmp_path: Path) -> None:
    masters = "whsec_" + "A" * 32 + ",older-master"
    printed = conveyor(tmp_path, "webhook-secret", "--tenant", "acme", env={"CONVEYOR_WEBHOOK_SECRET": masters})
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == [tenant_secret(m, "acme") for m in master_secrets(masters)]
    missing = conveyor(tmp_path, "webhook-secret")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_client_commands_use_the_homes_key_and_say_what_to_do_without_one(broker: str, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path / "home")
    pipeline.start_gateway()
    try:
        own = conveyor(pipeline.home, "status", "nosuchjob", "--url", pipeline.url)
        elsewhere = conveyor(tmp_path / "elsewhere", "status", "nosuchjob", "--url", pipeline.url)
        wrong = conveyor(tmp_path / "elsewhere", "status", "nosuchjob", "--url", pipeline.url,
                         env={"CONVEYOR_API_KEY": "cvk_000000000000_" + "x" * 43})
    finally:
        pipeline.stop_all()
    assert own.returncode == 1 and own.stderr.strip() == "no job nosuchjob"  # authenticated: the job is unknown
    for result in (elsewhere, wrong):
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "CONVEYOR_API_KEY" in result.stderr
    assert "no API key" in elsewhere.stderr and "refused the API key" in wrong.stderr


def test_a_gateway_with_a_broken_key_file_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "api-keys.json").write_text('[{"id": "short"}]')
    result = subprocess.run([sys.executable, "-m", "conveyor.gateway"], capture_output=True, text=True, timeout=60,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
                                 "CONVEYOR_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "api-keys.json is not a valid key file" in result.stderr

"""The operator's API client is configured from what kopf's login found (tests/test_operator_kmock.py
runs it against an API emulator)."""

from __future__ import annotations

import base64
from pathlib import Path

import kopf
import pytest

from conveyor.operator.kube import kube_config

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


def test_a_service_account_login_becomes_the_clients_config() -> None:
    info = kopf.ConnectionInfo(server="https://10.96.0.1:443", ca_data=PEM.encode(), token="sa-token",
                               default_namespace="media")
    config = kube_config(info).get()
    assert config.cluster.server == "https://10.96.0.1:443"
    assert base64.b64decode(config.cluster.certificate_auth_data).decode() == PEM  # kopf's PEM, as base64
    assert not config.cluster.insecure
    assert (config.user.token, config.namespace) == ("sa-token", "media")


def test_a_kubeconfig_login_keeps_base64_data_and_opens_relative_paths_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    encoded = base64.b64encode(PEM.encode()).decode()
    info = kopf.ConnectionInfo(server="https://kind:6443", ca_path="ca.crt", certificate_data=encoded,
                               private_key_path="client.key", insecure=True)
    config = kube_config(info).get()
    assert config.cluster.certificate_auth == str(tmp_path / "ca.crt")
    assert config.cluster.insecure
    assert (config.user.client_cert_data, config.user.client_key) == (encoded, str(tmp_path / "client.key"))
    assert config.user.token is None

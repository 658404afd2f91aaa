"""The operator's Kubernetes API calls, made with lightkube's AsyncClient: server-side apply of owned
objects, get, list by label, merge patch, background delete.

It connects with the credentials kopf's login handler found (`kopf.ConnectionInfo`: in-cluster
service account or kubeconfig), so the operator and kopf always talk to the same API server.
Objects are plain dicts (lightkube's generic resources), as the builders make them.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kopf
from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.types import CascadeType, PatchType

from conveyor.operator.builders import GROUP, KIND, PLURAL, VERSION

__all__ = ["ApiError", "DEPLOYMENTS", "FIELD_MANAGER", "KubeClient", "PIPELINES", "SCALED_OBJECTS", "TOPICS",
           "kind_of", "kube_config", "status_code"]

# The name the API server records as owner of every field the operator applies.
FIELD_MANAGER = "conveyor-operator"

Kind = type[GenericNamespacedResource]

# Deployments are generic resources too, not lightkube's typed model: every object stays the dict
# the builders make, so what is applied and what the server answers compare key by key.
DEPLOYMENTS = create_namespaced_resource("apps", "v1", "Deployment", "deployments")
SCALED_OBJECTS = create_namespaced_resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
TOPICS = create_namespaced_resource("cluster.redpanda.com", "v1alpha2", "Topic", "topics")
PIPELINES = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
KINDS: dict[tuple[str, str], Kind] = {
    ("apps/v1", "Deployment"): DEPLOYMENTS, ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECTS,
    ("cluster.redpanda.com/v1alpha2", "Topic"): TOPICS, (f"{GROUP}/{VERSION}", KIND): PIPELINES,
}

T = TypeVar("T")


def kind_of(body: Mapping[str, Any]) -> Kind:
    return KINDS[(body["apiVersion"], body["kind"])]


def status_code(exc: ApiError) -> int:
    """The HTTP status of a failed call (404: no such object, or a kind the cluster does not serve)."""
    return exc.response.status_code


def _base64(data: str | bytes | None) -> str | None:
    """kopf keeps CA and client-certificate data as PEM or base64; lightkube takes base64."""
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode() if raw.startswith(b"-----BEGIN ") else raw.decode()


def _path(path: Any) -> str | None:
    # kopf opens relative paths from the working directory; lightkube needs them absolute for that.
    return os.path.abspath(os.fsdecode(path)) if path else None


def kube_config(info: kopf.ConnectionInfo) -> KubeConfig:
    """lightkube's configuration for the endpoint and credentials kopf logged in with."""
    cluster = Cluster(server=info.server, certificate_auth=_path(info.ca_path),
                      certificate_auth_data=_base64(info.ca_data), insecure=bool(info.insecure))
    user = User(token=info.token, username=info.username, password=info.password,
                client_cert=_path(info.certificate_path), client_cert_data=_base64(info.certificate_data),
                client_key=_path(info.private_key_path), client_key_data=_base64(info.private_key_data))
    return KubeConfig.from_one(cluster=cluster, user=user, namespace=info.default_namespace)


def _client(info: kopf.ConnectionInfo, timeout: float) -> AsyncClient:
    return AsyncClient(kube_config(info), field_manager=FIELD_MANAGER, timeout=timeout,  # type: ignore[arg-type]
                       trust_env=info.trust_env, proxy=info.proxy_url)


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class KubeClient:
    """The verbs the operator uses; on 401 it logs in again once (service-account tokens rotate)."""

    def __init__(self, info: kopf.ConnectionInfo, *, relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
                 timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._relogin = relogin
        self._client = _client(info, timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        try:
            return await call(self._client)
        except ApiError as exc:
            if status_code(exc) != 401 or self._relogin is None or (info := self._relogin()) is None:
                raise
        await self._client.aclose()
        self._client = _client(info, self._timeout)
        return await call(self._client)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _plain(await self._call(lambda c: c.get(kind, name, namespace=namespace)))
        except ApiError as exc:
            if status_code(exc) == 404:
                return None
            raise

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include `labels` (also filtered here, whatever the server does)."""
        async def items(client: AsyncClient) -> list[dict[str, Any]]:
            return [_plain(obj) async for obj in client.list(kind, namespace=namespace, labels=dict(labels))]

        try:
            found = await self._call(items)
        except ApiError as exc:
            if status_code(exc) == 404:
                return []  # the kind is not installed (e.g. no Redpanda operator): nothing of it exists
            raise
        return [i for i in found if labels.items() <= (i.get("metadata", {}).get("labels") or {}).items()]

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of `body` as FIELD_MANAGER: creates the object or sets exactly the fields in
        `body`, removing those this manager applied before and left out now. `force` takes back fields
        someone else changed since (drift), as a controller must."""
        obj = kind_of(body)(dict(body))
        meta = body["metadata"]
        return _plain(await self._call(lambda c: c.apply(obj, namespace=meta["namespace"], force=True)))

    async def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return _plain(await self._call(lambda c: c.patch(kind, name, dict(patch), namespace=namespace,
                                                         patch_type=PatchType.MERGE)))

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource (None removes a key)."""
        return _plain(await self._call(lambda c: c.patch(kind.Status, name, {"status": dict(status)},
                                                         namespace=namespace, patch_type=PatchType.MERGE)))

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go by garbage collection); False if it was gone."""
        try:
            await self._call(lambda c: c.delete(kind, name, namespace=namespace, cascade=CascadeType.BACKGROUND))
        except ApiError as exc:
            if status_code(exc) == 404:
                return False
            raise
        return True

"""A small Kubernetes API client for the verbs the operator uses: get, list, create, merge-patch, delete.

It connects with the credentials kopf's login handler found (`kopf.ConnectionInfo`: in-cluster
service account or kubeconfig), so the operator and kopf always talk to the same API server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import kopf

from conveyor.operator.builders import API_VERSION, KIND, PLURAL


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    kind: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


DEPLOYMENTS = Kind("apps/v1", "deployments", "Deployment")
SCALED_OBJECTS = Kind("keda.sh/v1alpha1", "scaledobjects", "ScaledObject")
TOPICS = Kind("cluster.redpanda.com/v1alpha2", "topics", "Topic")
PIPELINES = Kind(API_VERSION, PLURAL, KIND)
KINDS = {(k.api_version, k.kind): k for k in (DEPLOYMENTS, SCALED_OBJECTS, TOPICS, PIPELINES)}


def kind_of(body: Mapping[str, Any]) -> Kind:
    return KINDS[(body["apiVersion"], body["kind"])]


class ApiError(Exception):
    """A non-2xx answer of the API server, with its status code and message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


def _client(info: kopf.ConnectionInfo, timeout: float) -> httpx.AsyncClient:
    verify: Any = info.as_ssl_context() if info.server.startswith("https") else False
    return httpx.AsyncClient(base_url=info.server, headers=info.as_http_headers(), verify=verify,
                             trust_env=info.trust_env, timeout=timeout)


class KubeClient:
    """Async JSON client; on 401 it logs in again once (service-account tokens rotate)."""

    def __init__(self, info: kopf.ConnectionInfo, *, relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
                 timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._relogin = relogin
        self._http = _client(info, timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                       content_type: str = "application/json") -> httpx.Response:
        for attempt in (1, 2):
            response = await self._http.request(method, path, json=json, params=params,
                                                headers={"Content-Type": content_type} if json is not None else None)
            if response.status_code == 401 and attempt == 1 and self._relogin is not None:
                info = self._relogin()
                if info is not None:
                    await self._http.aclose()
                    self._http = _client(info, self._timeout)
                    continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.is_success:
            return response.json() if response.content else {}
        try:
            message = response.json().get("message") or response.text
        except ValueError:
            message = response.text
        raise ApiError(response.status_code, message)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        response = await self._request("GET", kind.path(namespace, name))
        return None if response.status_code == 404 else self._check(response)

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include `labels` (also filtered here, whatever the server does)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        response = await self._request("GET", kind.path(namespace), params={"labelSelector": selector})
        if response.status_code == 404:
            return []  # the kind is not installed (e.g. no Redpanda operator): nothing of it exists
        items = self._check(response).get("items") or []
        return [i for i in items if labels.items() <= (i.get("metadata", {}).get("labels") or {}).items()]

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        return self._check(await self._request("POST", kind_of(body).path(meta["namespace"]), json=body))

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any], *,
                    subresource: str | None = None) -> dict[str, Any]:
        response = await self._request("PATCH", kind.path(namespace, name, subresource), json=patch,
                                       content_type="application/merge-patch+json")
        return self._check(response)

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go by garbage collection); False if it was gone."""
        response = await self._request("DELETE", kind.path(namespace, name),
                                       json={"kind": "DeleteOptions", "apiVersion": "v1",
                                             "propagationPolicy": "Background"})
        if response.status_code == 404:
            return False
        self._check(response)
        return True

"""The few Kubernetes API calls the executor's storage-snapshot backups make, over the official
`kubernetes` client, as plain dicts.

    pods_on_node(ns, selector, node)    GET  /api/v1/namespaces/{ns}/pods
    get_pvc / create_pvc                GET/POST  /api/v1/namespaces/{ns}/persistentvolumeclaims
    get_ / create_ / delete_snapshot    GET/POST/DELETE
                                        /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots

Every call is namespaced and uses only the verbs the Helm chart's executor Role grants
(deploy/helm/tidemark/templates/rbac.yaml): pods get/list, persistentvolumeclaims
get/list/create, volumesnapshots create/get/list/delete. Nothing cluster-scoped is read (the
VolumeSnapshotContent behind a snapshot is named, not fetched), so no ClusterRole is needed.

The client is blocking; each call runs in a thread so the event loop never waits on the network.
`KubeApi(api_client)` is the seam: tests hand in a client configured against a fake API server
(tests/doubles/k8s_api.py); `KubeApi.in_cluster()` is the pod's service account.

Errors: an `ApiException` becomes `KubeError` with the HTTP status; `retryable` is true for
429, 5xx and connection failures, false for what asking again cannot change (403, 404, 409,
422: the Role, a missing object, a name taken, a refused body).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

__all__ = ["SNAPSHOT_GROUP", "SNAPSHOT_VERSION", "KubeApi", "KubeError"]

SNAPSHOT_GROUP: Final = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION: Final = "v1"
_SNAPSHOTS: Final = "volumesnapshots"

T = TypeVar("T")


class KubeError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status (None: no answer)."""

    def __init__(self, what: str, status: int | None, reason: str) -> None:
        super().__init__(f"{what}: {status or 'no answer'} {reason}".strip())
        self.status = status
        self.retryable = status is None or status == 429 or status >= 500


class KubeApi:
    """The calls of the module docstring over one `ApiClient`."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._client = api_client
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    @classmethod
    def in_cluster(cls) -> KubeApi:
        """The pod's service account token and the cluster's CA (the executor's Role)."""
        config.load_incluster_config()
        return cls(client.ApiClient())

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            raise KubeError(what, exc.status, str(exc.reason or "")) from None
        except HTTPError as exc:
            raise KubeError(what, None, type(exc).__name__) from None

    def _plain(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = self._client.sanitize_for_serialization(obj)
        return out

    async def pods_on_node(self, namespace: str, selector: str, node: str) -> list[dict[str, Any]]:
        """Pods matching the label selector that are scheduled on `node`."""
        found = await self._call(
            f"listing pods {selector!r} in {namespace}",
            lambda: self._core.list_namespaced_pod(
                namespace, label_selector=selector, field_selector=f"spec.nodeName={node}"
            ),
        )
        pods = [self._plain(p) for p in found.items]
        # The field selector is the server's filter; checking again costs nothing and keeps a
        # pod elsewhere (a server that ignored the selector) out of a backup of this node.
        return [p for p in pods if p.get("spec", {}).get("nodeName") == node]

    async def get_pvc(self, namespace: str, name: str) -> dict[str, Any]:
        found = await self._call(
            f"reading PVC {namespace}/{name}",
            lambda: self._core.read_namespaced_persistent_volume_claim(name, namespace),
        )
        return self._plain(found)

    async def create_pvc(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        made = await self._call(
            f"creating PVC {namespace}/{body['metadata']['name']}",
            lambda: self._core.create_namespaced_persistent_volume_claim(namespace, body),
        )
        return self._plain(made)

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        made: dict[str, Any] = await self._call(
            f"creating VolumeSnapshot {namespace}/{body['metadata']['name']}",
            lambda: self._custom.create_namespaced_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, _SNAPSHOTS, body
            ),
        )
        return made

    async def get_snapshot(self, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call(
            f"reading VolumeSnapshot {namespace}/{name}",
            lambda: self._custom.get_namespaced_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, _SNAPSHOTS, name
            ),
        )
        return found

    async def delete_snapshot(self, namespace: str, name: str) -> bool:
        """Delete a VolumeSnapshot; False when it was already gone."""
        try:
            await self._call(
                f"deleting VolumeSnapshot {namespace}/{name}",
                lambda: self._custom.delete_namespaced_custom_object(
                    SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, _SNAPSHOTS, name
                ),
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

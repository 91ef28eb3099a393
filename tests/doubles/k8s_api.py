"""A fake Kubernetes API server (tests only — not Kubernetes): the few endpoints the executor's
storage-snapshot backups call, over real HTTP, so the real `kubernetes` client is what talks to
it (its URL building, serialisation and error handling are exercised; only the server is fake).

    GET    /api/v1/namespaces/{ns}/pods?labelSelector=a=b,c=d&fieldSelector=spec.nodeName=n
    GET    /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}
    POST   /api/v1/namespaces/{ns}/persistentvolumeclaims
    POST   /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots
    GET    /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}
    DELETE /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}

Anything else is a 404 (and recorded, so a test sees an unexpected call). Label selectors are
equality terms only, the only field selector is `spec.nodeName`.

What stands in for the CSI snapshotter and provisioner: `take(ns, pvc)` is called when a
VolumeSnapshot is created and its return value is the snapshot's "data"; the snapshot becomes
`readyToUse` after `ready_after` reads (or gets `status.error` when its PVC is in `fail`); a
PVC created with a VolumeSnapshot `dataSource` calls `provision(pvc, data)`. `refuse` makes the
creation of a snapshot of that PVC answer with an HTTP status instead.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

SNAP = "/apis/snapshot.storage.k8s.io/v1/namespaces/([^/]+)/volumesnapshots"
CORE = "/api/v1/namespaces/([^/]+)"


@dataclass
class FakeKubernetes:
    """The fake API's objects and hooks (module docstring)."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    pvcs: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot_data: dict[str, Any] = field(default_factory=dict)
    take: Callable[[str, str], Any] = lambda ns, pvc: None
    provision: Callable[[dict[str, Any], Any], None] = lambda pvc, data: None
    ready_after: int = 1
    fail: set[str] = field(default_factory=set)
    refuse: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    _reads: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_pod(
        self, ns: str, name: str, node: str, labels: dict[str, str], claims: list[str]
    ) -> None:
        self.pods[f"{ns}/{name}"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "oracle", "image": "oracle/database:19.3.0-ee"}],
                "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims],
            },
            "status": {"phase": "Running"},
        }

    def add_pvc(self, ns: str, name: str, storage: str = "10Gi") -> None:
        self.pvcs[f"{ns}/{name}"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "csi-fast",
                "volumeMode": "Filesystem",
                "resources": {"requests": {"storage": storage}},
            },
            "status": {"phase": "Bound"},
        }

    # -- the endpoints ------------------------------------------------------------------------

    def handle(self, method: str, url: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        with self.lock:
            self.calls.append((method, path))
            if m := re.fullmatch(CORE + "/pods", path):
                if method == "GET":
                    return 200, self._list_pods(m.group(1), query)
            elif m := re.fullmatch(CORE + "/persistentvolumeclaims", path):
                if method == "POST":
                    return self._create_pvc(m.group(1), body)
            elif m := re.fullmatch(CORE + "/persistentvolumeclaims/([^/]+)", path):
                if method == "GET":
                    return self._get(
                        self.pvcs, f"{m.group(1)}/{m.group(2)}", "persistentvolumeclaims"
                    )
            elif m := re.fullmatch(SNAP, path):
                if method == "POST":
                    return self._create_snapshot(m.group(1), body)
            elif m := re.fullmatch(SNAP + "/([^/]+)", path):
                key = f"{m.group(1)}/{m.group(2)}"
                if method == "GET":
                    return self._read_snapshot(key)
                if method == "DELETE":
                    if key not in self.snapshots:
                        return _status(404, "NotFound", f"volumesnapshots {key} not found")
                    self.deleted.append(m.group(2))
                    del self.snapshots[key]
                    return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
            return _status(404, "NotFound", f"the fake Kubernetes API has no {method} {path}")

    def _list_pods(self, ns: str, query: dict[str, str]) -> dict[str, Any]:
        wanted = dict(t.split("=", 1) for t in query.get("labelSelector", "").split(",") if t)
        node = query.get("fieldSelector", "").removeprefix("spec.nodeName=") or None
        items = [
            p
            for key, p in sorted(self.pods.items())
            if key.startswith(ns + "/")
            and wanted.items() <= p["metadata"]["labels"].items()
            and (node is None or p["spec"]["nodeName"] == node)
        ]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _get(
        self, objects: dict[str, dict[str, Any]], key: str, kind: str
    ) -> tuple[int, dict[str, Any]]:
        if key not in objects:
            return _status(404, "NotFound", f"{kind} {key} not found")
        return 200, objects[key]

    def _create_pvc(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = f"{ns}/{body['metadata']['name']}"
        if key in self.pvcs:
            return _status(409, "AlreadyExists", f"persistentvolumeclaims {key} already exists")
        source = (body.get("spec") or {}).get("dataSource")
        data = None
        if source is not None:
            snap = self.snapshots.get(f"{ns}/{source['name']}")
            if source.get("kind") != "VolumeSnapshot" or snap is None:
                return _status(422, "Invalid", f"no VolumeSnapshot {source.get('name')}")
            data = self.snapshot_data[f"{ns}/{source['name']}"]
        pvc = {**body, "status": {"phase": "Pending"}}
        self.pvcs[key] = pvc
        if source is not None:
            self.provision(pvc, data)
        return 201, pvc

    def _create_snapshot(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = f"{ns}/{body['metadata']['name']}"
        claim = body["spec"]["source"]["persistentVolumeClaimName"]
        if claim in self.refuse:
            return _status(self.refuse[claim], "Refused", f"snapshot of {claim} refused")
        if key in self.snapshots:
            return _status(409, "AlreadyExists", f"volumesnapshots {key} already exists")
        if f"{ns}/{claim}" not in self.pvcs:
            return _status(422, "Invalid", f"no PVC {claim}")
        self.snapshots[key] = {**body, "status": {"readyToUse": False}}
        self.snapshot_data[key] = self.take(ns, claim)
        self._reads[key] = 0
        return 201, self.snapshots[key]

    def _read_snapshot(self, key: str) -> tuple[int, dict[str, Any]]:
        if key not in self.snapshots:
            return _status(404, "NotFound", f"volumesnapshots {key} not found")
        snap = self.snapshots[key]
        self._reads[key] += 1
        claim = snap["spec"]["source"]["persistentVolumeClaimName"]
        if claim in self.fail:
            snap["status"] = {
                "readyToUse": False,
                "error": {"message": "the simulated storage refused the snapshot"},
            }
        elif self._reads[key] >= self.ready_after:
            snap["status"] = {
                "readyToUse": True,
                "boundVolumeSnapshotContentName": "snapcontent-" + snap["metadata"]["name"][-10:],
                "restoreSize": self.pvcs[f"{key.split('/')[0]}/{claim}"]["spec"]["resources"][
                    "requests"
                ]["storage"],
                "creationTime": "2026-01-01T00:00:00Z",
            }
        return 200, snap


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, doc = fake.handle(self.command, self.path, body)
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve(fake: FakeKubernetes) -> Iterator[client.ApiClient]:
    """Serve `fake` on a loopback port; yields a real `ApiClient` pointed at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = client.Configuration()
    conf.host = f"http://127.0.0.1:{server.server_address[1]}"
    api = client.ApiClient(conf)
    try:
        yield api
    finally:
        api.close()
        server.shutdown()
        server.server_close()
        thread.join()

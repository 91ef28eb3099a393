"""No secret leaks: a whole-stack backup and restore, then a search for every secret it held.

The secrets: a database password (the executor's `password_file`) and the NATS users'
passwords of the embedded stack. Searched: every process's argv (and the environment of the
stack's own processes), every file under the stack's state directory but the secrets
themselves and the nats-server config that must hold them, every message left in TM_EVT,
TM_CMD, TM_DLQ and every one seen on `tm.>` while it ran, and every span and metric the
services exported over OTLP/HTTP (to a receiver here that keeps the request bodies).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from schemas.messages import TargetTime
from services.bus.permissions import Role
from services.demo.ledger import Ledger
from services.stack.credentials import SECRETS_DIR
from tests.e2e.pitr_stack import PitrStack, protect

pytestmark = pytest.mark.e2e


class OtlpReceiver:
    """An OTLP/HTTP endpoint that keeps every request body (protobuf, gunzipped if need be)."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                bodies.append(raw)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tm-e2e-secrets-", dir="/var/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 (the database OS user traverses it)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def found_in(data: bytes, values: dict[str, bytes]) -> list[str]:
    return [name for name, value in values.items() if value in data]


def scan_processes(values: dict[str, bytes], own: set[int]) -> list[str]:
    """argv of every process; the environment too of the stack's own (services, nats-server)."""
    leaks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        files = ["cmdline", "environ"] if int(entry) in own else ["cmdline"]
        for name in files:
            try:
                data = Path(f"/proc/{entry}/{name}").read_bytes()
            except OSError:
                continue
            leaks += [f"/proc/{entry}/{name}: {s}" for s in found_in(data, values)]
    return leaks


def scan_files(state_dir: Path, values: dict[str, bytes]) -> list[str]:
    # These two hold the NATS passwords by design (0600): the files and the server's config.
    allowed = {state_dir / SECRETS_DIR, state_dir / "nats" / "nats-server.conf"}
    leaks = []
    for path in state_dir.rglob("*"):
        if not path.is_file() or any(path == a or a in path.parents for a in allowed):
            continue
        leaks += [f"{path}: {s}" for s in found_in(path.read_bytes(), values)]
    return leaks


async def scan_streams(pitr: PitrStack, values: dict[str, bytes]) -> tuple[int, list[str]]:
    js = pitr.nc.jetstream()
    read, leaks = 0, []
    for stream in ("TM_EVT", "TM_CMD", "TM_DLQ", "KV_tm_plans", "KV_tm_nodes", "KV_tm_health"):
        state = (await js.stream_info(stream)).state
        for seq in range(state.first_seq or 1, (state.last_seq or 0) + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            read += 1
            headers = repr(msg.headers or {}).encode()
            leaks += [f"{stream}#{seq}: {s}" for s in found_in((msg.data or b"") + headers, values)]
    return read, leaks


async def test_no_secret_reaches_argv_logs_messages_or_spans(root: Path) -> None:
    db = protect(root, "secrets-src")
    db_secret = secrets.token_urlsafe(24)
    db.password_file = root / "secrets-src" / "pg.pass"
    db.password_file.write_text(f"*:*:*:*:{db_secret}\n")  # .pgpass format
    os.chown(db.password_file, db.cluster.user.uid, db.cluster.user.gid)
    db.password_file.chmod(0o600)
    with OtlpReceiver() as otlp:
        pitr = await PitrStack.start(
            root,
            [db],
            extra_env={
                "TIDEMARK_TELEMETRY__OTLP_ENDPOINT": otlp.endpoint,
                "TIDEMARK_TELEMETRY__METRICS_INTERVAL_S": "1",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )
        state_dir = pitr.stack.state_dir
        values = {"database password": db_secret.encode()}
        for role, path in pitr.stack.passwords.items():
            values[f"nats password of {role.value}"] = path.read_text().strip().encode()
        assert len(values) == 1 + len(Role)
        try:
            ledger = await asyncio.to_thread(Ledger.start, db.cluster)
            await asyncio.to_thread(ledger.write)
            backup = await pitr.backup(db, "e2e: secrets scan")
            for _ in range(4):
                await asyncio.to_thread(ledger.write)
                time.sleep(0.12)
            await asyncio.to_thread(db.switch_wal)
            await pitr.wait_covered(db, ledger.entries[-1].lsn)
            at, _ = ledger.pick_moment(backup.completed_at, random.Random(3))
            restored = await pitr.restore(db, TargetTime(at=at), clone="secrets")
            try:
                leaks = scan_processes(values, _service_pids(pitr))
                read, stream_leaks = await scan_streams(pitr, values)
                assert read > 0
                leaks += stream_leaks
                for seen in pitr.recorder.since(0):
                    leaks += [
                        f"{seen.type}: {s}"
                        for s in found_in(seen.model_dump_json().encode(), values)
                    ]
            finally:
                restored.stop_clone()
        finally:
            await pitr.close()  # the services flush their spans on the way out
        leaks += scan_files(state_dir, values)
        assert otlp.bodies, "the services exported no telemetry"
        for body in otlp.bodies:
            leaks += [f"OTLP body: {s}" for s in found_in(body, values)]
    assert leaks == [], leaks


def _service_pids(pitr: PitrStack) -> set[int]:
    stack = pitr.stack
    pids = {e.process.pid for e in stack.procs.values() if e.process is not None}
    if stack.nats is not None and stack.nats.process is not None:
        pids.add(stack.nats.process.pid)
    return pids

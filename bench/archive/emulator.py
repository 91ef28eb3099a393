"""The GCS emulator (`gcp-storage-emulator`, in memory), one fresh process per contender run.

It keeps every object in memory and serves one request at a time, so each run starts it anew:
no contender pays for the previous one's objects, and none inherits a warmed-up process.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

BUCKET = "tidemark-bench"
PROJECT = "tidemark-bench"


class Emulator:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.host, 0))
            self.port = s.getsockname()[1]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gcp_storage_emulator",
                    "start",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--in-memory",
                    "--project-number",
                    "1234",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"gcp-storage-emulator exited with {self._process.returncode}: "
                    + self.log_path.read_text(errors="replace")[-1500:]
                )
            if self._answers():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator not ready after {timeout}s")
            time.sleep(0.05)
        with self.client() as client:
            client.create_bucket(BUCKET)

    def _answers(self) -> bool:
        url = f"{self.endpoint}/"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our emulator
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @contextlib.contextmanager
    def client(self) -> Iterator[storage.Client]:
        client = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.endpoint},
        )
        try:
            yield client
        finally:
            client.close()

    def object_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every object's name and size under `prefix` in the bench bucket."""
        with self.client() as client:
            return {
                blob.name: int(blob.size or 0)
                for blob in client.list_blobs(BUCKET, prefix=prefix or None)
            }


@contextlib.contextmanager
def running_emulator(log_path: Path) -> Iterator[Emulator]:
    emulator = Emulator(log_path)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()

"""GcsStore specifics: resumable chunking and prefixes against the emulator; what `put_file` does
when GCS stores or rejects other bytes, on the scripted transport (it needs a local file)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from services.blobstore import Digest, GcsStore, IntegrityError, RetrySettings, crc32c_of_bytes
from tests.fixtures.gcs import TEST_CHUNK_SIZE, GcsEmulator, error, resource, scripted_store

pytestmark = pytest.mark.integration


class CountingAdapter(HTTPAdapter):
    """A pass-through adapter that records (method, path) of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((request.method or "", (request.path_url or "").split("?")[0]))
        return super().send(request, *args, **kwargs)


async def test_large_objects_upload_in_resumable_chunks(
    gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    adapter = CountingAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    store = GcsStore(
        gcs_bucket,
        endpoint=gcs_emulator.endpoint,
        chunk_size=TEST_CHUNK_SIZE,
        retry=RetrySettings(initial=0.05, deadline=10),
        http=session,
    )
    data = os.urandom(9 * TEST_CHUNK_SIZE + 1)
    src = tmp_path / "big"
    src.write_bytes(data)
    try:
        for key, put in [
            ("from-file", store.put_file("from-file", src)),
            ("from-stream", store.put_stream("from-stream", iter([data[:7], data[7:]]))),
        ]:
            adapter.calls.clear()
            info = await put
            chunk_puts = [c for c in adapter.calls if c[0] == "PUT" and c[1].startswith("/upload")]
            assert len(chunk_puts) == 10, (key, adapter.calls)
            assert info.crc32c == crc32c_of_bytes(data)
    finally:
        await store.close()


@pytest.mark.parametrize("announced", [True, False])
async def test_a_segment_in_memory_or_streamed_goes_in_one_final_request(
    gcs_emulator: GcsEmulator, gcs_bucket: str, announced: bool
) -> None:
    """A 16 MiB object with the default chunk size: the session, then one request carrying the
    whole object (not a full chunk followed by an empty one to finalise it)."""
    adapter = CountingAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    store = GcsStore(gcs_bucket, endpoint=gcs_emulator.endpoint, http=session)
    data = os.urandom(16 << 20)
    digest = Digest(crc32c=crc32c_of_bytes(data), size=len(data))
    try:
        info = await store.put_stream(
            "segment", io.BytesIO(data), {"k": "v"}, expect=digest if announced else None
        )
        assert (info.crc32c, info.size, info.metadata) == (digest.crc32c, digest.size, {"k": "v"})
        uploads = [c for c in adapter.calls if c[1].startswith("/upload")]
        assert [method for method, _ in uploads] == ["POST", "PUT"], adapter.calls
        # Announced, other bytes are refused by GCS itself: it checks the declared crc32c.
        other = data[:-1] + bytes([data[-1] ^ 1])
        with pytest.raises(IntegrityError):
            await store.put_stream("other", io.BytesIO(other), expect=digest)
        assert await store.head("other") is None
    finally:
        await store.close()


async def test_small_file_is_one_request(
    gcs_emulator: GcsEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    adapter = CountingAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    store = GcsStore(gcs_bucket, endpoint=gcs_emulator.endpoint, http=session)
    src = tmp_path / "small"
    src.write_bytes(b"x" * 1000)
    try:
        await store.put_file("small", src)
    finally:
        await store.close()
    uploads = [c for c in adapter.calls if c[1].startswith("/upload")]
    assert uploads == [("POST", f"/upload/storage/v1/b/{gcs_bucket}/o")]


async def test_prefixes_isolate_stores_in_one_bucket(
    gcs_emulator: GcsEmulator, gcs_bucket: str
) -> None:
    one = GcsStore(gcs_bucket, "tenant-one", endpoint=gcs_emulator.endpoint)
    two = GcsStore(gcs_bucket, "tenant-two/", endpoint=gcs_emulator.endpoint)
    try:
        await one.put_stream("db/k", b"one")
        await two.put_stream("db/k", b"two")  # same key, other prefix: no conflict
        assert [i.key async for i in one.list()] == ["db/k"]
        assert await one.get_bytes("db/k") == b"one"
        assert await two.get_bytes("db/k") == b"two"
    finally:
        await one.close()
        await two.close()


async def test_storage_emulator_host_is_honoured(
    gcs_emulator: GcsEmulator, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    store = GcsStore(gcs_bucket)  # no endpoint, no credentials: the google client takes the env
    try:
        await store.put_stream("k", b"v")
        assert await store.get_bytes("k") == b"v"
    finally:
        await store.close()


async def test_put_file_deletes_a_generation_stored_with_other_bytes(tmp_path: Path) -> None:
    src = tmp_path / "segment"
    src.write_bytes(b"abc")
    stored_other = resource("segment", b"abd", generation=21)
    store, transport = scripted_store((404, error(404)), (200, stored_other), (204, b""))
    with pytest.raises(IntegrityError):
        await store.put_file("segment", src)
    upload, delete = transport.seen[1], transport.seen[2]
    assert upload.method == "POST"
    assert transport.query(1)["uploadType"] == ["multipart"]
    assert transport.query(1)["ifGenerationMatch"] == ["0"]
    assert delete.method == "DELETE"
    assert transport.query(2)["ifGenerationMatch"] == ["21"]
    await store.close()


async def test_put_file_checksum_rejected_by_gcs(tmp_path: Path) -> None:
    src = tmp_path / "segment"
    src.write_bytes(b"abc")
    rejection = error(400, 'Provided CRC32C "AAAAAA==" doesn\'t match calculated CRC32C "x".')
    store, transport = scripted_store((404, error(404)), (400, rejection))
    with pytest.raises(IntegrityError):
        await store.put_file("segment", src)
    assert len(transport.seen) == 2  # not retried, and nothing to delete: GCS kept nothing
    await store.close()

"""GcsStore against a scripted HTTP transport: retries, preconditions, checksums, pagination.

The seam is the `requests.Session` GcsStore hands to the google client: a mounted adapter answers
each request from a script, the way pgBackRest tests its cloud drivers against scripted servers.
This proves what the emulator cannot: HTTP 412 handling (the emulator ignores preconditions),
paging (it ignores page sizes) and server-side corruption (its bytes always match).
"""

from __future__ import annotations

import json

import pytest
import requests

from services.blobstore import (
    GcsStore,
    IntegrityError,
    ObjectConflict,
    ObjectNotFound,
    RetryableBlobError,
    TerminalBlobError,
    crc32c_of_bytes,
)
from tests.fixtures.gcs import (
    SCRIPTED_BUCKET,
    SCRIPTED_ENDPOINT,
    Step,
    error,
    resource,
    scripted_store,
)

pytestmark = pytest.mark.unit

UPLOAD_URL = (
    f"{SCRIPTED_ENDPOINT}/upload/storage/v1/b/{SCRIPTED_BUCKET}/o?uploadType=resumable&upload_id=u1"
)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_status_is_retried(status: int) -> None:
    store, transport = scripted_store((status, error(status)), (200, resource("k", b"abc")))
    info = await store.head("k")
    assert info is not None
    assert (info.key, info.size, info.generation, info.metadata) == (
        "k",
        3,
        7,
        {"engine": "postgres"},
    )
    assert len(transport.seen) == 2
    await store.close()


async def test_connection_reset_is_retried() -> None:
    store, transport = scripted_store(
        requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer")),
        ConnectionResetError(104, "Connection reset by peer"),
        (200, resource("k", b"abc")),
    )
    assert await store.head("k") is not None
    assert len(transport.seen) == 3
    await store.close()


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_client_errors_are_terminal_and_not_retried(status: int) -> None:
    store, transport = scripted_store((status, error(status)), (200, resource("k", b"abc")))
    with pytest.raises(TerminalBlobError) as caught:
        await store.head("k")
    assert not caught.value.retryable
    assert len(transport.seen) == 1
    await store.close()


async def test_retry_deadline_gives_up_as_retryable() -> None:
    store, transport = scripted_store(*[(503, error(503))] * 500, deadline=0.2)
    with pytest.raises(RetryableBlobError):
        await store.head("k")
    assert 1 < len(transport.seen) < 500
    await store.close()


async def test_missing_object() -> None:
    store, _ = scripted_store((404, error(404)), (404, error(404)))
    assert await store.head("k") is None
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("k")
    await store.close()


def upload_steps(final: Step) -> list[Step]:
    """head (absent), initiate a resumable session, then the single chunk's answer."""
    return [(404, error(404)), (200, {}, {"location": UPLOAD_URL}), final]


async def test_create_is_conditioned_on_absence() -> None:
    created = resource("k", b"abc", generation=9)
    store, transport = scripted_store(*upload_steps((200, created)), (200, created))
    info = await store.put_stream("k", b"abc", {"engine": "postgres"})
    assert info.generation == 9
    initiate = transport.seen[1]
    assert transport.query(1)["ifGenerationMatch"] == ["0"]
    assert isinstance(initiate.body, bytes | str)
    assert json.loads(initiate.body)["metadata"] == {"engine": "postgres"}
    # The final chunk carries our crc32c, so GCS itself refuses to finalise other bytes.
    assert transport.seen[2].headers["x-goog-hash"] == f"crc32c={crc32c_of_bytes(b'abc')}"
    await store.close()


@pytest.mark.parametrize("when", ["initiate", "finalize"])
async def test_precondition_failure_with_same_bytes_is_success(when: str) -> None:
    steps: list[Step]
    if when == "initiate":
        steps = [(404, error(404)), (412, error(412))]
    else:
        steps = upload_steps((412, error(412)))
    store, _ = scripted_store(*steps, (200, resource("k", b"abc", generation=5)))
    info = await store.put_stream("k", [b"a", b"bc"])
    assert info.generation == 5
    await store.close()


async def test_precondition_failure_with_other_bytes_is_a_conflict() -> None:
    store, transport = scripted_store(
        *upload_steps((412, error(412))), (200, resource("k", b"xyz", generation=5))
    )
    with pytest.raises(ObjectConflict) as caught:
        await store.put_stream("k", b"abc")
    assert caught.value.existing_crc32c == crc32c_of_bytes(b"xyz")
    assert not any(r.method == "DELETE" for r in transport.seen)  # the original is untouched
    await store.close()


async def test_corrupted_upload_deletes_exactly_its_generation() -> None:
    corrupt = resource("k", b"abd", generation=11)  # GCS stored other bytes than we sent
    store, transport = scripted_store(*upload_steps((200, corrupt)), (204, b""))
    with pytest.raises(IntegrityError):
        await store.put_stream("k", b"abc")
    delete = transport.seen[-1]
    assert delete.method == "DELETE"
    assert transport.query(len(transport.seen) - 1)["ifGenerationMatch"] == ["11"]
    await store.close()


async def test_read_verifies_crc32c() -> None:
    store, _ = scripted_store(
        (200, resource("k", b"good")),
        (200, b"evil", {"content-range": "bytes 0-3/4"}),
    )
    with pytest.raises(IntegrityError):
        await store.get_bytes("k")
    await store.close()


async def test_list_follows_page_tokens() -> None:
    store, transport = scripted_store(
        (200, {"items": [resource("a/1", b"1"), resource("a/2", b"2")], "nextPageToken": "t1"}),
        (200, {"items": [resource("a/3", b"3")]}),
    )
    assert [i.key async for i in store.list("a/", page_size=2)] == ["a/1", "a/2", "a/3"]
    first, second = transport.query(0), transport.query(1)
    assert first["maxResults"] == ["2"]
    assert first["prefix"] == ["a/"]
    assert second["pageToken"] == ["t1"]
    await store.close()


def test_chunk_size_must_be_a_multiple_of_256k() -> None:
    with pytest.raises(ValueError, match="multiple"):
        GcsStore(SCRIPTED_BUCKET, endpoint=SCRIPTED_ENDPOINT, chunk_size=1_000_000)


async def test_a_garbled_session_start_is_retried_not_terminal() -> None:
    # Found by `make chaos`: an initiation answer cut off inside its head (200, no Location)
    # failed the upload as terminal; it is a transport failure like a truncated body.
    created = resource("k", b"abc", generation=3)
    store, transport = scripted_store(
        (404, error(404)),
        (200, {}),  # the Location header lost in transit
        (200, {}, {"location": UPLOAD_URL}),
        (200, created),
        (200, created),
    )
    info = await store.put_stream("k", b"abc")
    assert info.generation == 3
    assert [r.method for r in transport.seen] == ["GET", "POST", "POST", "PUT", "GET"]
    await store.close()

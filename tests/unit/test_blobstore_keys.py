"""Object keys, store URLs, and the example in docs/blobstore.md."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from services.blobstore import (
    GcsStore,
    InvalidKey,
    MemoryStore,
    TerminalBlobError,
    open_store,
    validate_key,
    validate_prefix,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "db-uid/1/logs/1/000000010000000000000001",
        "db/backups/20250101T000000/manifest.json",
        "with space/and-ünïcode",
        "a.b/c..d/e.",
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "../up",
        "a/..",
        "a/../b",
        ".",
        "a/.",
        "a//b",
        "a/",
        ".dot",
        "a/.tmp-1234",
        "a\\b",
        "a\nb",
        "a\x7fb",
        "é" * 513,  # 1026 UTF-8 bytes
    ],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key(key)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TerminalBlobError)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b/00001", "db/tl1/logs/"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/a", "../", "a/../", "a//", ".x", "a/.x"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        validate_prefix(prefix)


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


def test_open_store_gs_with_emulator_endpoint() -> None:
    store = open_store("gs://bucket/tidemark/prod/?endpoint=http://127.0.0.1:9&chunk_size=524288")
    assert isinstance(store, GcsStore)
    assert (store.bucket_name, store.prefix, store.chunk_size) == (
        "bucket",
        "tidemark/prod",
        512 * 1024,
    )
    overridden = open_store("gs://bucket?endpoint=http://127.0.0.1:9", chunk_size=1024 * 1024)
    assert isinstance(overridden, GcsStore)
    assert (overridden.prefix, overridden.chunk_size) == ("", 1024 * 1024)


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/x",
        "gs:///no-bucket",
        "gs://bucket?endpoint=http://127.0.0.1:9&colour=blue",
        "gs://bucket/../x?endpoint=http://127.0.0.1:9",
        "gs://bucket?endpoint=http://127.0.0.1:9&chunk_size=1000",
        "file://remote-host/x",
        "file:relative/path",
    ],
)
def test_open_store_rejects(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        open_store(url)


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example in docs/blobstore.md runs as written (against memory://)."""
    doc = (Path(__file__).parents[2] / "docs" / "blobstore.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert blocks, "docs/blobstore.md lost its example"
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for block in blocks:
                code = compile(block, "docs/blobstore.md", "exec")
                exec(code, {"__name__": "__doc_example__"})  # noqa: S102 - our own doc
        except BaseException as exc:
            failures.append(exc)

    # Its own thread: the example calls asyncio.run, which must not disturb this thread's loop.
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert not failures, failures
    out = capsys.readouterr().out
    assert "alarm:" in out
    assert "0000000100000016000000B3" in out

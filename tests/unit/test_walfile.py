"""WAL file names and segment headers (services.engines.postgres.walfile).

The header layout itself is checked against a real segment in tests/integration/test_walpush.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.engines.postgres.walfile import (
    LONG_HEADER_SIZE,
    XLP_LONG_HEADER,
    SegmentMismatchError,
    WalFileError,
    WalFileKind,
    WalHeaderError,
    WalNameError,
    check_segment,
    classify,
    format_lsn,
    parse_long_header,
    parse_lsn,
    parse_name,
    segment_name,
    segment_start_lsn,
)

pytestmark = pytest.mark.unit

MiB = 1 << 20
SYSID = 7310508274797755629


def long_header(
    *,
    tli: int = 1,
    pageaddr: int = 0x1000000,
    seg_size: int = 16 * MiB,
    info: int = XLP_LONG_HEADER | 0x4,
    magic: int = 0xD110,
    blcksz: int = 8192,
    sysid: int = SYSID,
) -> bytes:
    """A long page header as PostgreSQL 15 writes it (x86: little-endian)."""
    return struct.pack("<HHIQI4xQII", magic, info, tli, pageaddr, 0, sysid, seg_size, blcksz)


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "log", "seg", "offset"),
    [
        ("000000010000000000000001", WalFileKind.SEGMENT, 1, 0, 1, None),
        ("0000000A0000001A000000B3", WalFileKind.SEGMENT, 10, 0x1A, 0xB3, None),
        ("000000010000000000000003.partial", WalFileKind.PARTIAL, 1, 0, 3, None),
        ("00000002.history", WalFileKind.HISTORY, 2, None, None, None),
        ("000000010000000000000002.00000028.backup", WalFileKind.BACKUP_HISTORY, 1, 0, 2, 0x28),
    ],
)
def test_parse_name(
    name: str,
    kind: WalFileKind,
    timeline: int,
    log: int | None,
    seg: int | None,
    offset: int | None,
) -> None:
    parsed = parse_name(name)
    assert (parsed.name, parsed.kind, parsed.timeline) == (name, kind, timeline)
    assert (parsed.log, parsed.seg, parsed.backup_offset) == (log, seg, offset)
    assert classify(name) is kind
    assert parsed.has_segment == (kind is not WalFileKind.HISTORY)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "00000001000000000000001",  # 23 digits
        "0000000100000000000000010",  # 25 digits
        "0000000100000000000000ab",  # PostgreSQL writes upper case only
        "000000000000000000000001",  # timeline 0
        "00000000.history",
        "0000001.history",
        "00000002.History",
        "000000010000000000000001.",
        "000000010000000000000001.partial.partial",
        "000000010000000000000001.0000028.backup",
        "000000010000000000000001.00000028.backup.gz",
        "pg_wal/000000010000000000000001",
        "../000000010000000000000001",
        "archive_status",
        "000000010000000000000001.ready",
        "\uff1000000010000000000000001",  # a full-width digit
    ],
)
def test_refuses_what_postgresql_never_archives(name: str) -> None:
    assert classify(name) is None
    with pytest.raises(WalNameError):
        parse_name(name)


def test_segment_number_and_start_lsn_depend_on_segment_size() -> None:
    name = parse_name("000000010000001A000000B3")
    assert name.segment_number(16 * MiB) == 0x1A * 256 + 0xB3
    assert segment_start_lsn(name, 16 * MiB) == parse_lsn("1A/B3000000")
    assert segment_start_lsn("000000010000000100000003", 1024 * MiB) == parse_lsn("1/C0000000")
    backup = parse_name("000000010000000000000002.00000028.backup")
    assert backup.start_lsn(16 * MiB) == parse_lsn("0/2000028")


def test_seg_field_out_of_range_for_the_segment_size() -> None:
    # With 64 MiB segments a log id holds 64 of them: seg 0x40 cannot exist.
    with pytest.raises(WalNameError, match="out of range"):
        segment_start_lsn("000000010000000000000040", 64 * MiB)
    assert segment_start_lsn("00000001000000000000003F", 64 * MiB) == 0x3F * 64 * MiB


@pytest.mark.parametrize("size", [0, MiB - 1, 3 * MiB, 2048 * MiB])
def test_impossible_segment_sizes(size: int) -> None:
    with pytest.raises(WalFileError, match="power of two"):
        segment_start_lsn("000000010000000000000001", size)


def test_history_files_name_no_segment() -> None:
    with pytest.raises(WalNameError, match="names no segment"):
        parse_name("00000002.history").segment_number(16 * MiB)


@given(
    timeline=st.integers(1, 0xFFFFFFFF),
    size_shift=st.integers(20, 30),
    data=st.data(),
)
def test_segment_name_round_trips(timeline: int, size_shift: int, data: st.DataObject) -> None:
    size = 1 << size_shift
    number = data.draw(st.integers(0, (1 << 64) // size - 1))
    name = segment_name(timeline, number, size)
    parsed = parse_name(name)
    assert parsed.timeline == timeline
    assert parsed.segment_number(size) == number
    assert segment_start_lsn(parsed, size) == number * size


@given(st.integers(0, 0xFFFFFFFFFFFFFFFF))
def test_lsn_text_round_trips(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


def test_lsn_formats() -> None:
    assert format_lsn(0x16B3000028) == "16/B3000028"
    assert parse_lsn("0/17F6488") == 0x17F6488
    for bad in ("", "16", "16/", "/1", "1/2/3", "G/0", "123456789/0"):
        with pytest.raises(ValueError, match="not an LSN"):
            parse_lsn(bad)


# -- headers ------------------------------------------------------------------------------------


def test_parse_synthesized_long_header() -> None:
    data = long_header(tli=3, pageaddr=0x1AB3000000) + b"\x00" * 100
    header = parse_long_header(data)
    assert header.magic == 0xD110
    assert header.info & XLP_LONG_HEADER
    assert header.timeline == 3
    assert header.page_address == 0x1AB3000000
    assert header.system_identifier == SYSID
    assert (header.segment_size, header.block_size) == (16 * MiB, 8192)
    assert LONG_HEADER_SIZE == 40 == len(long_header())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (long_header()[:39], "too short"),
        (long_header(info=0x0004), "XLP_LONG_HEADER"),
        (long_header(seg_size=12345), "xlp_seg_size"),
        (long_header(blcksz=3000), "xlp_xlog_blcksz"),
        (long_header(tli=0), "xlp_tli"),
        # The same header in the other byte order (or any non-WAL bytes) fails the size checks.
        (struct.pack(">HHIQI4xQII", 0xD110, 6, 1, 1 << 24, 0, SYSID, 16 * MiB, 8192), "xlp_"),
    ],
)
def test_parse_rejects_what_is_not_a_long_header(data: bytes, match: str) -> None:
    with pytest.raises(WalHeaderError, match=match):
        parse_long_header(data)


# -- check_segment (small synthesized files; the size is sparse) -------------------------------


def write_segment(path: Path, header: bytes, size: int = 16 * MiB) -> Path:
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(size)
    return path


def test_check_segment_accepts_the_named_segment(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "00000001000000000000001A", long_header(pageaddr=0x1A000000))
    assert check_segment(path).page_address == 0x1A000000
    # a .partial segment is a whole segment, named for the old timeline
    partial = write_segment(
        tmp_path / "00000001000000000000001B.partial", long_header(pageaddr=0x1B000000)
    )
    assert check_segment(partial).timeline == 1


def test_check_segment_catches_a_truncated_copy(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "000000010000000000000001", long_header(), size=8 * MiB)
    with pytest.raises(SegmentMismatchError, match="truncated"):
        check_segment(path)


def test_check_segment_catches_a_recycled_or_mislabelled_file(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "000000010000000000000002", long_header(pageaddr=0x1000000))
    with pytest.raises(SegmentMismatchError, match=r"0/1000000, .* starts at 0/2000000"):
        check_segment(path)
    # the same file checked under the name it really has
    assert check_segment(path, "000000010000000000000001").timeline == 1


def test_check_segment_timelines(tmp_path: Path) -> None:
    ahead = write_segment(
        tmp_path / "000000010000000000000003", long_header(tli=2, pageaddr=3 << 24)
    )
    with pytest.raises(SegmentMismatchError, match="header timeline 2"):
        check_segment(ahead)
    # The first segment of timeline 2 starts as a copy of timeline 1's: its header says 1.
    switch = write_segment(
        tmp_path / "000000020000000000000003", long_header(tli=1, pageaddr=3 << 24)
    )
    assert check_segment(switch).timeline == 1
    assert check_segment(switch, parent_timelines={1}).timeline == 1
    with pytest.raises(SegmentMismatchError, match="not one of its parents"):
        check_segment(switch, parent_timelines=set())


def test_check_segment_refuses_non_segments(tmp_path: Path) -> None:
    path = tmp_path / "00000002.history"
    path.write_text("1\t0/3000000\tno recovery target specified\n")
    with pytest.raises(WalNameError, match="not a segment"):
        check_segment(path)
    with pytest.raises(WalHeaderError, match="lacks XLP_LONG_HEADER"):
        check_segment(path, "000000010000000000000001")

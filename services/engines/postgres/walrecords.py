"""How far a WAL segment being written holds whole records, and the newest commit time in them.

A segment received over the replication protocol grows in place (``pg_receivewal`` writes it as
``<name>.partial``, zero-filled to the segment size ahead of the data). Which of its bytes can
be counted on is read from the bytes themselves: records are walked from the start of the
segment, and a record counts once its header is sane and its crc32c (``xl_crc``) matches. The
first record that does not (zeros, a record cut off by the end of what arrived) is where the
durable WAL ends for now. Commit records found on the way (resource manager ``Transaction``,
``XLOG_XACT_COMMIT`` or ``XLOG_XACT_COMMIT_PREPARED``) give the commit time: the first field of
their main data, ``xact_time``, microseconds since 2000-01-01 UTC — the very timestamp
``recovery_target_time`` compares against, so the time the catalog shows is the one a restore
stops at.

Layout (``access/xlogrecord.h``, ``access/xlog_internal.h``; little-endian, as in walfile.py)::

    page header   short 24 bytes, long 40 bytes on a segment's first page; every XLOG_BLCKSZ
                  bytes; xlp_rem_len = bytes of a record continued from the page before
    XLogRecord    xl_tot_len u32, xl_xid u32, xl_prev u64, xl_info u8, xl_rmid u8, 2 pad,
                  xl_crc u32 (24 bytes); records start MAXALIGN'd (8) and run on across pages
    main data     after the block headers: 0xFF + u8 length (short) or 0xFE + u32 length (long);
                  0xFD + u16 (origin) and 0xFC + u32 (top-level xid) may precede it

``xl_crc`` is crc32c over the record after its header, then over the header's first 20 bytes.
A record that began in the previous segment (the first page's ``xlp_rem_len``) is skipped: its
end is counted when the segment before it completes.

Standard library plus the blob store's crc32c (``google-crc32c``): this runs in the archiver.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import google_crc32c

__all__ = ["RecordScan", "WalScanError", "scan_records"]

_SHORT_HEADER = 24
_LONG_HEADER = 40
_RECORD_HEADER = 24
_XLP_FIRST_IS_CONTRECORD = 0x0001
_XLP_LONG_HEADER = 0x0002
_RM_XACT_ID = 1
_XLOG_XACT_OPMASK = 0x70
_XLOG_XACT_COMMIT = 0x00
_XLOG_XACT_COMMIT_PREPARED = 0x30
_BLOCK_ID_DATA_SHORT = 255
_BLOCK_ID_DATA_LONG = 254
_BLOCK_ID_ORIGIN = 253
_BLOCK_ID_TOPLEVEL_XID = 252
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_PAGE_HEADER = struct.Struct("<HHIQI")
_RECORD = struct.Struct("<IIQBBxxI")


class WalScanError(ValueError):
    """The bytes are not this segment's WAL (a page header names another address)."""


@dataclass(frozen=True, slots=True)
class RecordScan:
    """Where a scan of one segment got to."""

    #: Offset in the segment just past the last whole record.
    end: int
    #: Where the next record starts (`end` MAXALIGN'd): the `start` of the next scan.
    resume: int
    #: Offset of the newest commit record found at or after the scan's start, and its time.
    commit_offset: int | None
    commit_time: datetime | None


def _aligned(offset: int) -> int:
    return (offset + 7) & ~7


class _Pages:
    """The logical stream of record bytes in one segment: page headers left out."""

    def __init__(self, data: bytes | memoryview, page_size: int) -> None:
        self.data = memoryview(data)
        self.page_size = page_size

    def header_size(self, page_start: int) -> int:
        return _LONG_HEADER if page_start == 0 else _SHORT_HEADER

    def skip_header(self, offset: int) -> int:
        """`offset` moved past a page header it points at."""
        page = offset - offset % self.page_size
        if offset == page:
            return offset + self.header_size(page)
        return offset

    def read(self, offset: int, length: int) -> tuple[bytes, int] | None:
        """`length` record bytes from `offset` on (headers skipped), and the offset after them;
        None when the data ends first."""
        out = bytearray()
        while length > 0:
            offset = self.skip_header(offset)
            page_end = offset - offset % self.page_size + self.page_size
            take = min(length, page_end - offset)
            if offset + take > len(self.data):
                return None
            out += self.data[offset : offset + take]
            offset += take
            length -= take
        return bytes(out), offset


def _commit_time(rmid: int, info: int, body: bytes) -> datetime | None:
    """The commit time of a commit record's main data, None for any other record."""
    if rmid != _RM_XACT_ID:
        return None
    if info & _XLOG_XACT_OPMASK not in (_XLOG_XACT_COMMIT, _XLOG_XACT_COMMIT_PREPARED):
        return None
    i = 0
    while i < len(body):
        block_id = body[i]
        if block_id == _BLOCK_ID_DATA_SHORT:
            start = i + 2
            break
        if block_id == _BLOCK_ID_DATA_LONG:
            start = i + 5
            break
        if block_id == _BLOCK_ID_ORIGIN:
            i += 3
        elif block_id == _BLOCK_ID_TOPLEVEL_XID:
            i += 5
        else:
            return None  # a block reference: not a commit record's shape
    else:
        return None
    if start + 8 > len(body):
        return None
    (micros,) = struct.unpack_from("<q", body, start)
    return _PG_EPOCH + timedelta(microseconds=micros)


def scan_records(
    data: bytes | memoryview,
    *,
    segment_start: int,
    page_size: int = 8192,
    start: int | None = None,
) -> RecordScan:
    """Walk the whole records of one segment's bytes `data` (as far as they go).

    `segment_start`: the segment's LSN, which every page header must name. `start`: the offset
    of a record start found by an earlier scan (so a growing segment is read once, not again
    from its beginning at every look); None reads from the first record of the segment.
    """
    pages = _Pages(data, page_size)
    if len(data) < _LONG_HEADER:
        return RecordScan(start or 0, start or 0, None, None)
    if start is None:
        magic, info, _tli, address, rem_len = _PAGE_HEADER.unpack_from(data, 0)
        if address != segment_start or not info & _XLP_LONG_HEADER:
            raise WalScanError(f"page 0 names address {address:X}, not {segment_start:X}")
        offset = _LONG_HEADER
        if info & _XLP_FIRST_IS_CONTRECORD and rem_len:
            skipped = pages.read(offset, rem_len)
            if skipped is None:
                return RecordScan(0, 0, None, None)
            offset = skipped[1]
        offset = _aligned(offset)
    else:
        offset = start
    commit_offset: int | None = None
    commit_time: datetime | None = None
    end = offset
    if start is not None and start > 0:
        end = start
    while True:
        at = pages.skip_header(offset)
        page = at - at % page_size
        if at != offset or offset % page_size == 0:
            # A new page: it must be this segment's, or the bytes are not ours.
            if page + _SHORT_HEADER > len(data):
                break
            magic, info, _tli, address, _rem = _PAGE_HEADER.unpack_from(data, page)
            if address == 0 and magic == 0:
                break  # not written yet
            if address != segment_start + page:
                break  # an old, recycled page: the WAL ends before it
        got = pages.read(offset, _RECORD_HEADER)
        if got is None:
            break
        header, after = got
        tot_len, _xid, _prev, info, rmid, crc = _RECORD.unpack(header)
        if tot_len < _RECORD_HEADER:
            break
        body_got = pages.read(after, tot_len - _RECORD_HEADER)
        if body_got is None:
            break
        body, after_body = body_got
        computed = google_crc32c.extend(google_crc32c.value(body), header[:20])
        if computed != crc:
            break
        record_start = pages.skip_header(offset)
        when = _commit_time(rmid, info, body)
        if when is not None:
            commit_offset, commit_time = record_start, when
        end = after_body
        offset = _aligned(after_body)
        if offset >= len(data):
            break
    return RecordScan(end, max(offset, end), commit_offset, commit_time)

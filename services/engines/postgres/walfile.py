"""PostgreSQL WAL file names and segment headers.

What ``archive_command`` hands over is one of four kinds of file (:class:`WalFileKind`)::

    000000010000001A000000B3                  segment: timeline, log, seg (8 upper-hex each)
    000000010000001A000000B3.partial          the last, incomplete segment of an old timeline
    00000002.history                          timeline history (which parent, switched where)
    000000010000001A000000B3.00000028.backup  backup history (written by pg_backup_stop)

A segment's number is ``log * (2**32 // seg_size) + seg`` and it starts at LSN
``number * seg_size``: the name alone does not give the LSN, the cluster's segment size is needed.

Every segment begins with a long page header (``XLogLongPageHeaderData``, 40 bytes, host byte
order; little-endian on the machines we support)::

    offset  size  field
         0     2  xlp_magic         WAL format version (0xD110 for PostgreSQL 15)
         2     2  xlp_info          flag bits; XLP_LONG_HEADER (0x0002) is set on this page
         4     4  xlp_tli           timeline of the first record on the page
         8     8  xlp_pageaddr      LSN of the page: the segment's start LSN
        16     4  xlp_rem_len       bytes of a record continued from the previous segment
        20     4  (padding)
        24     8  xlp_sysid         the cluster's "Database system identifier"
        32     4  xlp_seg_size      segment size in bytes
        36     4  xlp_xlog_blcksz   WAL page size in bytes

:func:`check_segment` compares a file against its name with that header, which catches a
truncated copy, a recycled segment that was never rewritten (its page address is an older LSN) and
a file archived under the wrong name.

Standard library only: the push side of archiving, which must stay dependency-free, follows the
same rules (see ``services/engines/postgres/walpush.py``).
"""

from __future__ import annotations

import enum
import os
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LONG_HEADER_SIZE",
    "XLP_LONG_HEADER",
    "LongPageHeader",
    "SegmentMismatchError",
    "WalFileError",
    "WalFileKind",
    "WalFileName",
    "WalHeaderError",
    "WalNameError",
    "check_segment",
    "classify",
    "format_lsn",
    "parse_long_header",
    "parse_lsn",
    "parse_name",
    "read_long_header",
    "segment_name",
    "segment_start_lsn",
]

LONG_HEADER_SIZE = 40
"""Bytes of ``XLogLongPageHeaderData`` at the start of every segment."""

XLP_LONG_HEADER = 0x0002
"""``xlp_info`` flag: this page carries the long header (the first page of a segment)."""

MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30

_LONG_HEADER = struct.Struct("<HHIQI4xQII")
_HEX8 = "[0-9A-F]{8}"


class WalFileKind(enum.Enum):
    """The kinds of file PostgreSQL archives, named as ``archive_command`` receives them."""

    SEGMENT = "segment"
    """A complete WAL segment, ``TTTTTTTTLLLLLLLLSSSSSSSS``."""
    PARTIAL = "partial"
    """``<segment>.partial``: the segment a timeline switch left unfinished on the old timeline."""
    HISTORY = "history"
    """``TTTTTTTT.history``: the new timeline's ancestry, written at promotion."""
    BACKUP_HISTORY = "backup_history"
    """``<segment>.<offset>.backup``: start/stop LSNs of one base backup."""


_PATTERNS: dict[WalFileKind, re.Pattern[str]] = {
    WalFileKind.SEGMENT: re.compile(f"({_HEX8})({_HEX8})({_HEX8})"),
    WalFileKind.PARTIAL: re.compile(f"({_HEX8})({_HEX8})({_HEX8})\\.partial"),
    WalFileKind.HISTORY: re.compile(f"({_HEX8})\\.history"),
    WalFileKind.BACKUP_HISTORY: re.compile(f"({_HEX8})({_HEX8})({_HEX8})\\.({_HEX8})\\.backup"),
}


class WalFileError(ValueError):
    """Base of this module's errors: a name or a file is not what PostgreSQL would produce."""


class WalNameError(WalFileError):
    """Not the name of any file PostgreSQL archives (or a field out of range)."""


class WalHeaderError(WalFileError):
    """The bytes are not a segment's long page header."""


class SegmentMismatchError(WalFileError):
    """A segment's size or header contradicts its name: truncated, recycled or mislabelled."""


@dataclass(frozen=True)
class WalFileName:
    """A parsed WAL file name. ``log``/``seg`` are None for history files."""

    name: str
    kind: WalFileKind
    timeline: int
    log: int | None = None
    seg: int | None = None
    backup_offset: int | None = None
    """For backup history files: the backup's start offset within the segment."""

    @property
    def has_segment(self) -> bool:
        """True for segments, partial segments and backup history files (which name one)."""
        return self.log is not None

    def segment_number(self, segment_size: int) -> int:
        """``XLogSegNo`` of the named segment, for a cluster with ``segment_size``-byte segments."""
        if self.log is None or self.seg is None:
            raise WalNameError(f"{self.name}: a {self.kind.value} file names no segment")
        per_log = _segments_per_log(segment_size)
        if self.seg >= per_log:
            raise WalNameError(
                f"{self.name}: seg {self.seg:08X} is out of range for {segment_size}-byte "
                f"segments (at most {per_log - 1:08X})"
            )
        return self.log * per_log + self.seg

    def start_lsn(self, segment_size: int) -> int:
        """The LSN of the segment's first byte (plus ``backup_offset`` for a backup history)."""
        return self.segment_number(segment_size) * segment_size + (self.backup_offset or 0)


def _segments_per_log(segment_size: int) -> int:
    if not (
        MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        and segment_size & (segment_size - 1) == 0
    ):
        raise WalFileError(
            f"segment size {segment_size} is not a power of two between 1 MiB and 1 GiB"
        )
    return (1 << 32) // segment_size


def parse_name(name: str) -> WalFileName:
    """Parse a WAL file name (no directory part); :class:`WalNameError` if it is none."""
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(name)
        if match is None:
            continue
        fields = [int(group, 16) for group in match.groups()]
        if fields[0] == 0:
            raise WalNameError(f"{name}: timeline 0 does not exist (timelines start at 1)")
        if kind is WalFileKind.HISTORY:
            return WalFileName(name, kind, fields[0])
        return WalFileName(
            name,
            kind,
            fields[0],
            log=fields[1],
            seg=fields[2],
            backup_offset=fields[3] if kind is WalFileKind.BACKUP_HISTORY else None,
        )
    raise WalNameError(
        f"{name!r} is not a WAL segment, .partial segment, timeline history or backup history name"
    )


def classify(name: str) -> WalFileKind | None:
    """The kind of WAL file ``name`` is, or None when it is not one."""
    try:
        return parse_name(name).kind
    except WalNameError:
        return None


def segment_start_lsn(name: str | WalFileName, segment_size: int) -> int:
    """The LSN at which the segment ``name`` starts, for ``segment_size``-byte segments."""
    parsed = parse_name(name) if isinstance(name, str) else name
    return parsed.segment_number(segment_size) * segment_size


def segment_name(timeline: int, segment_number: int, segment_size: int) -> str:
    """The file name of segment ``segment_number`` on ``timeline`` (``XLogFileName``)."""
    per_log = _segments_per_log(segment_size)
    if not 1 <= timeline <= 0xFFFFFFFF or segment_number < 0:
        raise WalNameError(f"no such segment: timeline {timeline}, number {segment_number}")
    log, seg = divmod(segment_number, per_log)
    if log > 0xFFFFFFFF:
        raise WalNameError(f"segment number {segment_number} is beyond the end of WAL")
    return f"{timeline:08X}{log:08X}{seg:08X}"


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it: ``16/B3000028``."""
    if not 0 <= lsn <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """Parse ``16/B3000028`` (as ``pg_current_wal_lsn()`` prints it) into an integer."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


@dataclass(frozen=True)
class LongPageHeader:
    """The long page header at the start of a WAL segment (see the module docstring)."""

    magic: int
    info: int
    timeline: int
    page_address: int
    rem_len: int
    system_identifier: int
    segment_size: int
    block_size: int


def parse_long_header(data: bytes) -> LongPageHeader:
    """Decode the first :data:`LONG_HEADER_SIZE` bytes of a segment.

    Raises :class:`WalHeaderError` when there are too few bytes, the long-header flag is not set,
    or the sizes are not ones PostgreSQL can be built with (which is what reading a file that is
    not WAL, or WAL of the other byte order, looks like).
    """
    if len(data) < LONG_HEADER_SIZE:
        raise WalHeaderError(f"{len(data)} bytes: too short for a long page header")
    header = LongPageHeader(*_LONG_HEADER.unpack_from(data))
    if not header.info & XLP_LONG_HEADER:
        raise WalHeaderError(
            f"xlp_info {header.info:#06x} lacks XLP_LONG_HEADER: not the first page of a segment"
        )
    size = header.segment_size
    if not (MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0):
        raise WalHeaderError(f"xlp_seg_size {size} is not a possible WAL segment size")
    block = header.block_size
    if not (1024 <= block <= 65536 and block & (block - 1) == 0):
        raise WalHeaderError(f"xlp_xlog_blcksz {block} is not a possible WAL page size")
    if header.timeline == 0:
        raise WalHeaderError("xlp_tli is 0: not a written WAL page")
    return header


def read_long_header(path: str | os.PathLike[str]) -> LongPageHeader:
    """Read and decode the long page header of the segment file at ``path``."""
    with open(path, "rb") as handle:
        data = handle.read(LONG_HEADER_SIZE)
    try:
        return parse_long_header(data)
    except WalHeaderError as exc:
        raise WalHeaderError(f"{path}: {exc}") from None


def check_segment(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    parent_timelines: Collection[int] | None = None,
) -> LongPageHeader:
    """Check the segment at ``path`` is the one ``name`` (default: its file name) says it is.

    Holds when the file is exactly ``xlp_seg_size`` bytes, its page address is the segment's
    start LSN, and its timeline is the name's. The first segment of a new timeline is the
    exception: PostgreSQL starts it as a copy of the parent's segment up to the switch point, so
    its first page carries a parent timeline. Such a segment passes when its header timeline is in
    ``parent_timelines`` (the name's timeline's ancestors, from its history file) or, when that is
    None, whenever it is lower than the name's. Returns the header; raises
    :class:`SegmentMismatchError` (or :class:`WalHeaderError`, :class:`WalNameError`).
    """
    file = Path(path)
    parsed = parse_name(name if name is not None else file.name)
    if parsed.kind not in (WalFileKind.SEGMENT, WalFileKind.PARTIAL):
        raise WalNameError(f"{parsed.name}: a {parsed.kind.value} file is not a segment")
    header = read_long_header(file)
    size = file.stat().st_size
    if size != header.segment_size:
        raise SegmentMismatchError(
            f"{file}: {size} bytes, but its header says segments are {header.segment_size}: "
            "truncated or padded"
        )
    expected = segment_start_lsn(parsed, header.segment_size)
    if header.page_address != expected:
        raise SegmentMismatchError(
            f"{file}: page address {format_lsn(header.page_address)}, but {parsed.name} starts at "
            f"{format_lsn(expected)}: a recycled segment or the wrong file"
        )
    tli = header.timeline
    if tli != parsed.timeline:
        is_parent = tli < parsed.timeline if parent_timelines is None else tli in parent_timelines
        if not is_parent:
            raise SegmentMismatchError(
                f"{file}: header timeline {tli}, but {parsed.name} is on timeline "
                f"{parsed.timeline} (and {tli} is not one of its parents)"
            )
    return header

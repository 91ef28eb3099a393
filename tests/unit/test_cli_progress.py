"""Progress bars say how much, how fast and how long still (the clock is passed in)."""

from __future__ import annotations

from services.cli.progressview import human_bytes, transfer_detail


def test_bytes_read_in_binary_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 2**20 / 2) == "1.5 MiB"
    assert human_bytes(5 * 2**40) == "5.0 TiB"


def test_a_byte_job_shows_amount_rate_and_eta() -> None:
    detail = transfer_detail(2**30, 4 * 2**30, "bytes", elapsed_s=10.0)
    assert detail == "1.0 GiB / 4.0 GiB, 102.4 MiB/s, ETA 0:30"


def test_the_rate_counts_from_the_first_report_seen() -> None:
    # Joined at 3 GiB: 1 GiB in 10 s is 102.4 MiB/s, not 409.6.
    detail = transfer_detail(4 * 2**30, 8 * 2**30, "bytes", elapsed_s=10.0, first_done=3 * 2**30)
    assert detail == "4.0 GiB / 8.0 GiB, 102.4 MiB/s, ETA 0:40"


def test_other_units_and_missing_parts() -> None:
    assert (
        transfer_detail(12, 40, "segments", elapsed_s=4.0)
        == "12 segments / 40 segments, 3 segments/s, ETA 0:09"
    )
    assert transfer_detail(12, None, "files", elapsed_s=0.0) == "12 files"
    assert transfer_detail(None, None, None, elapsed_s=5.0) == ""

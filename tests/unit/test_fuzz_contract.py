"""`decode()` under hostile input: whatever arrives, it returns a valid envelope or raises
`ContractError` with a reason. Anything else would escape the consumer's dead-letter path (the
loop dead-letters `ContractError` only) and turn a bad message into retries and a crash log.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import MESSAGE_TYPES, ContractError, Envelope, decode, subject_for
from tests.fuzzing import FUZZ, HUGE, json_values, strings
from tests.unit.test_schema_contract import example

pytestmark = pytest.mark.unit

TYPES = sorted(MESSAGE_TYPES)
NODE = "db-node-1"


def decoded_or_refused(raw: bytes, subject: str | None = None) -> Envelope[Any] | None:
    """The envelope `decode` accepted (checked to be valid), or None when it refused well."""
    try:
        message = decode(raw, subject=subject)
    except ContractError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason.strip(), f"ContractError without a reason for {raw[:200]!r}"
        return None
    # What was accepted is a message this build could have sent: it survives its own round trip.
    again = decode(message.model_dump_json().encode(), subject=subject)
    assert again == message
    return message


def document(message_type: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(example(message_type).model_dump_json())
    return loaded


def subject_of(message_type: str) -> str:
    return subject_for(example(message_type), node=NODE)


def places(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside a JSON document (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        found.append((*at, key))
        found.extend(places(child, (*at, key)))
    return found


def parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid envelope with one to three hostile edits, and the subject it was sent on."""
    message_type = draw(st.sampled_from(TYPES))
    doc = document(message_type)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(places(doc)))
        container, key = parent(doc, path), path[-1]
        edit = draw(st.sampled_from(["drop", "replace", "extra", "huge"]))
        if edit == "drop":
            del container[key]
        elif edit == "replace":
            container[key] = draw(json_values())
        elif edit == "huge":
            container[key] = HUGE
        elif isinstance(container, dict):
            container[draw(strings())] = draw(json_values(max_leaves=2))
        else:
            container.append(draw(json_values(max_leaves=2)))
    raw = json.dumps(doc).encode()  # NaN and infinities go out as JSON5-ish tokens, on purpose
    return draw(subjects(message_type)), raw


def subjects(message_type: str) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.just(subject_of(message_type)),
        st.sampled_from(TYPES).map(subject_of),
        strings(),
    )


@FUZZ
@given(raw=st.binary(max_size=2000), subject=st.one_of(st.none(), strings()))
def test_arbitrary_bytes_are_refused_with_a_reason(raw: bytes, subject: str | None) -> None:
    decoded_or_refused(raw, subject)


@FUZZ
@given(value=json_values(max_leaves=20))
def test_arbitrary_json_is_refused_with_a_reason(value: Any) -> None:
    decoded_or_refused(json.dumps(value).encode())


@FUZZ
@given(message_type=st.sampled_from(TYPES), fields=st.dictionaries(strings(), json_values()))
def test_a_known_type_with_arbitrary_fields_is_refused_with_a_reason(
    message_type: str, fields: dict[str, Any]
) -> None:
    decoded_or_refused(json.dumps({**fields, "type": message_type}).encode())


@FUZZ
@given(case=mutated())
def test_a_mutated_envelope_is_decoded_valid_or_refused(case: tuple[str | None, bytes]) -> None:
    subject, raw = case
    decoded_or_refused(raw, subject)


@FUZZ
@given(
    message_type=st.sampled_from(TYPES),
    cut=st.integers(min_value=0),
    junk=st.binary(max_size=8),
)
def test_a_damaged_byte_stream_is_refused_with_a_reason(
    message_type: str, cut: int, junk: bytes
) -> None:
    raw = example(message_type).model_dump_json().encode()
    at = cut % (len(raw) + 1)
    decoded_or_refused(raw[:at] + junk + raw[at + len(junk) :], subject_of(message_type))


@pytest.mark.parametrize("message_type", TYPES)
def test_every_example_round_trips_on_its_own_subject(message_type: str) -> None:
    message = example(message_type)
    raw = message.model_dump_json().encode()
    assert decode(raw, subject=subject_of(message_type)) == message
    assert decoded_or_refused(raw) == message


@pytest.mark.parametrize("message_type", TYPES)
def test_every_type_is_refused_on_another_types_subject(message_type: str) -> None:
    raw = example(message_type).model_dump_json().encode()
    elsewhere = next(
        subject_of(other)
        for other in TYPES
        if MESSAGE_TYPES[other].SUBJECT != MESSAGE_TYPES[message_type].SUBJECT
    )
    with pytest.raises(ContractError, match="does not belong on subject"):
        decode(raw, subject=elsewhere)


# -- holes the fuzzing found ---------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"type": ', b'{"a":'])
def test_deeply_nested_json_is_refused_not_a_recursion_error(opener: bytes) -> None:
    # json.loads raised RecursionError here, which the consumer treats as a handler failure and
    # retries until MaxDeliver instead of dead-lettering at once.
    with pytest.raises(ContractError, match="nested"):
        decode(opener * 100_000)


@pytest.mark.parametrize("occurred_at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
def test_a_time_beyond_the_calendar_in_utc_is_refused_not_an_overflow(occurred_at: str) -> None:
    # Normalising to UTC raised OverflowError, which pydantic does not turn into a
    # ValidationError, so it escaped decode().
    doc = document("backup.request")
    doc["occurred_at"] = occurred_at
    with pytest.raises(ContractError, match="occurred_at"):
        decode(json.dumps(doc).encode())

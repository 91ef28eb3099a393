"""The exported contract (schemas/json, schemas/asyncapi.json) matches the models and is usable.

`jsonschema` is not a dependency, so exported schemas are checked structurally, and example
messages are checked against them with a deliberately small validator that knows exactly the
keywords pydantic emits and fails loudly on any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    MESSAGE_TYPES,
    DatabaseRef,
    Engine,
    Envelope,
    Incarnation,
    Lsn,
    Payload,
    Scn,
    Timeline,
    decode,
    envelope,
    lineage_from_key,
    subject_for,
    uuid7,
    wildcard,
)
from schemas.export import (
    ASYNCAPI_FILE,
    DIALECT,
    JSON_DIR,
    ROOT,
    drift,
    json_schemas,
    render,
    write,
)
from schemas.messages import (
    AlarmReason,
    ArchiveAlarm,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupPolicy,
    BackupRequested,
    BackupResult,
    BackupSpec,
    BackupVerified,
    CancelJob,
    CancelRequest,
    CloneSpec,
    Failure,
    IndexedLog,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    LogArchived,
    LogDeleted,
    LogIndexed,
    LogsIndexed,
    Operation,
    PolicyChanged,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreMode,
    RestorePlan,
    RestoreProgress,
    RestoreRequested,
    RunBackup,
    RunRestore,
    RunVerify,
    SetPolicy,
    TargetPosition,
    TargetTime,
    WindowChanged,
    WindowSummary,
)
from tests.unit.migration_examples import MIGRATION_EXAMPLES
from tests.unit.program_examples import PROGRAM_EXAMPLES

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
NODE = "db-node-1.zone-a"
PG = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7_312_001)
ORA = DatabaseRef(uid="erp-prod", engine=Engine.ORACLE, name="ERPPROD", system_id=1_234_567_890)
TL1 = Timeline(id=1)
INC = Incarnation(resetlogs_id=1_180_000_000, resetlogs_scn=Scn(value=1), number=2)
WAL = "orders-db/tl-00000001/logs/1/0000000100000016000000B3"
JOB, RESTORE = uuid7(), uuid7()

# One valid payload per message type, and the database it is about.
EXAMPLES: dict[str, Callable[[], tuple[Payload, DatabaseRef]]] = {
    "backup.request": lambda: (RequestBackup(), PG),
    "backup.run": lambda: (
        RunBackup(job_id=JOB, backup_id="b-20260131", spec=BackupSpec(tag="NIGHTLY")),
        ORA,
    ),
    "backup.requested": lambda: (
        BackupRequested(backup_id="b-20260131", spec=BackupSpec(), node=NODE, reason="policy"),
        PG,
    ),
    "backup.completed": lambda: (
        BackupCompleted(
            backup_id="b-20260131",
            job_id=JOB,
            spec=BackupSpec(),
            lineage=INC,
            start=Scn(value=9_000_100),
            consistent_at=Scn(value=9_000_250),
            started_at=T0,
            completed_at=T0 + timedelta(minutes=42),
            size_bytes=80 << 30,
            piece_count=12,
            manifest_key="erp-prod/backups/b-20260131/manifest.json",
        ),
        ORA,
    ),
    "backup.failed": lambda: (
        BackupFailed(
            backup_id="b-20260131",
            failure=Failure(reason="archived log not found", code="ORA-19625", retryable=False),
        ),
        ORA,
    ),
    "log.archived": lambda: (
        LogArchived(
            lineage=TL1,
            kind="wal",
            thread=1,
            sequence=0x16B3,
            first=Lsn.parse("16/B3000000"),
            next=Lsn.parse("16/B4000000"),
            size_bytes=16 << 20,
            crc32c="q83vEg==",
            object_key=WAL,
            file_name="0000000100000016000000B3",
            node=NODE,
            archived_at=T0,
            stored_at=T0 + timedelta(seconds=1),
        ),
        PG,
    ),
    "log.indexed": lambda: (
        LogIndexed(lineage=TL1, thread=1, sequence=0x16B3, object_key=WAL, crc32c="q83vEg=="),
        PG,
    ),
    "logs.indexed": lambda: (
        LogsIndexed(
            lineage=TL1,
            logs=(
                IndexedLog(thread=1, sequence=0x16B3, object_key=WAL, crc32c="q83vEg=="),
                IndexedLog(
                    thread=1,
                    sequence=0x16B4,
                    object_key=WAL.removesuffix("B3") + "B4",
                    crc32c="AAAAAA==",
                ),
            ),
        ),
        PG,
    ),
    "log.deleted": lambda: (
        LogDeleted(
            lineage=TL1,
            kind="wal",
            thread=1,
            sequence=0x16B3,
            object_key=WAL,
            file_name="0000000100000016000000B3",
            reason="retention: older than the oldest kept base",
        ),
        PG,
    ),
    "backup.deleted": lambda: (
        BackupDeleted(
            backup_id="b-20260131",
            manifest_key="erp-prod/backups/b-20260131/manifest.json",
            reason="retention: recovery window of 14 days",
        ),
        ORA,
    ),
    "window.changed": lambda: (
        WindowChanged(
            lineage="tl-00000001",
            windows=[
                WindowSummary(
                    start=Lsn.parse("16/A0000100"),
                    end=Lsn.parse("16/B4000000"),
                    start_time=T0,
                    end_time=T0 + timedelta(hours=3),
                    bases=["b-20260131"],
                )
            ],
        ),
        PG,
    ),
    "restore.request": lambda: (
        RequestRestore(
            target=TargetTime(at=T0),
            mode=RestoreMode.CLONE,
            clone=CloneSpec(data_dir="/var/lib/postgresql/clone", port=5433),
        ),
        PG,
    ),
    "restore.run": lambda: (
        RunRestore(
            job_id=JOB,
            restore_id=RESTORE,
            target=TargetPosition(position=Lsn.parse("16/B374D848")),
            mode=RestoreMode.IN_PLACE,
            plan=RestorePlan(
                base_backup_id="b-20260131",
                base_manifest_key="orders-db/backups/b-20260131/manifest.json",
                log_keys=[WAL],
                lineage=TL1,
            ),
        ),
        PG,
    ),
    "restore.requested": lambda: (
        RestoreRequested(
            restore_id=RESTORE,
            target=TargetTime(at=T0),
            mode=RestoreMode.IN_PLACE,
            reason="bad deploy",
        ),
        PG,
    ),
    "restore.progress": lambda: (
        RestoreProgress(restore_id=RESTORE, phase="replaying", percent=40.0),
        PG,
    ),
    "restore.completed": lambda: (
        RestoreCompleted(
            restore_id=RESTORE,
            target=TargetTime(at=T0),
            reached=Lsn.parse("16/B374D848"),
            reached_time=T0,
            lineage=Timeline(id=2, parent=1, branch_lsn=Lsn.parse("16/B374D848")),
        ),
        PG,
    ),
    "restore.failed": lambda: (
        RestoreFailed(restore_id=RESTORE, failure=Failure(reason="target before first backup")),
        PG,
    ),
    "job.accepted": lambda: (
        JobAccepted(job_id=JOB, command_id=uuid7(), operation=Operation.BACKUP, node=NODE),
        ORA,
    ),
    "job.progress": lambda: (
        JobProgress(
            job_id=JOB, operation=Operation.BACKUP, phase="copying", done=3, total=12, unit="files"
        ),
        ORA,
    ),
    "job.succeeded": lambda: (
        JobSucceeded(
            job_id=JOB,
            operation=Operation.BACKUP,
            result=BackupResult(
                backup_id="b-20260131",
                manifest_key="erp-prod/backups/b-20260131/manifest.json",
                size_bytes=80 << 30,
                consistent_at=Scn(value=9_000_250),
            ),
            started_at=T0,
            finished_at=T0 + timedelta(minutes=42),
        ),
        ORA,
    ),
    "job.failed": lambda: (
        JobFailed(
            job_id=JOB,
            operation=Operation.RESTORE,
            failure=Failure(reason="executor restarted", retryable=True),
            interrupted=True,
        ),
        PG,
    ),
    "backup.verify": lambda: (
        RunVerify(
            job_id=JOB,
            backup_id="b-20260131",
            manifest_key="orders-db/backups/b-20260131/manifest.json",
        ),
        PG,
    ),
    "backup.verified": lambda: (
        BackupVerified(
            backup_id="b-20260131",
            job_id=JOB,
            ok=True,
            checks=["pg_verifybackup: ok", "started and answered: 42 tables"],
            verified_at=datetime(2026, 1, 31, 3, 5, tzinfo=UTC),
        ),
        PG,
    ),
    "job.cancel": lambda: (CancelJob(job_id=JOB), PG),
    "policy.set": lambda: (
        SetPolicy(policy=BackupPolicy(full_cron="0 1 * * 0", recovery_window_days=14)),
        PG,
    ),
    "policy.changed": lambda: (PolicyChanged(policy=None, revision=7), PG),
    "request.cancel": lambda: (CancelRequest(target_id=RESTORE), PG),
    "request.accepted": lambda: (
        RequestAccepted(command_id=JOB, command_type="restore.request", ref_id=str(RESTORE)),
        PG,
    ),
    "request.rejected": lambda: (
        RequestRejected(
            command_id=JOB,
            command_type="restore.request",
            reason="the target is before the first backup's consistent point",
            code="TM-CAT-BEFORE",
            nearest_after=Lsn.parse("16/B374D848"),
        ),
        PG,
    ),
    "archive.alarm": lambda: (
        ArchiveAlarm(
            reason=AlarmReason.CHECKSUM_CONFLICT,
            detail="the key already holds a different log",
            node=NODE,
            object_key=WAL,
            path="/var/lib/tidemark/spool/orders-db/ready/0000000100000016000000B3",
            existing_crc32c="q83vEg==",
            attempted_crc32c="AAAAAA==",
        ),
        PG,
    ),
}

EXAMPLES.update(MIGRATION_EXAMPLES)
EXAMPLES.update(PROGRAM_EXAMPLES)  # a program names no database: its envelopes carry none


def example(message_type: str) -> Envelope[Any]:
    data, database = EXAMPLES[message_type]()
    return envelope(data, source="executor@db-node-1", database=database)


def as_json(message: Envelope[Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(message.model_dump_json())
    return loaded


# --- a small validator for the subset of JSON Schema that pydantic emits ----------------------

_ANNOTATIONS = {"$id", "$schema", "$defs", "title", "description", "default", "discriminator"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_FORMATS: dict[str, Callable[[str], bool]] = {
    "uuid": lambda v: re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", v) is not None,
    "date-time": lambda v: (
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", v) is not None
    ),
}


def resolve(root: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"non-local $ref {ref!r}"
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def violations(
    value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$"
) -> list[str]:
    """Why `value` does not satisfy `schema`; empty when it does."""
    unknown = set(schema) - _ANNOTATIONS - _KEYWORDS.keys()
    assert not unknown, f"the test validator does not know {sorted(unknown)}; teach it"
    found: list[str] = []
    for keyword, argument in schema.items():
        if keyword in _KEYWORDS:
            found.extend(_KEYWORDS[keyword](value, argument, schema, root, at))
    return found


def _ref(value: Any, ref: str, _: Any, root: dict[str, Any], at: str) -> list[str]:
    return violations(value, resolve(root, ref), root, at)


def _properties(value: Any, props: dict[str, Any], _: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [
        problem
        for name, sub in props.items()
        if name in value
        for problem in violations(value[name], sub, root, f"{at}.{name}")
    ]


def _additional(value: Any, allowed: Any, schema: dict[str, Any], root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    extra = sorted(set(value) - set(schema.get("properties", {})))
    if allowed is False:
        return [f"{at}: unexpected {name!r}" for name in extra]
    if allowed is True:
        return []
    return [p for name in extra for p in violations(value[name], allowed, root, f"{at}.{name}")]


def _one_of(value: Any, options: list[Any], _: Any, root: Any, at: str) -> list[str]:
    matches = sum(not violations(value, option, root, at) for option in options)
    return [] if matches == 1 else [f"{at}: matches {matches} of oneOf, not exactly one"]


def _any_of(value: Any, options: list[Any], _: Any, root: Any, at: str) -> list[str]:
    if any(not violations(value, option, root, at) for option in options):
        return []
    return [f"{at}: matches none of anyOf"]


def _items(value: Any, sub: dict[str, Any], _: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, list):
        return []
    return [p for i, item in enumerate(value) for p in violations(item, sub, root, f"{at}[{i}]")]


def _property_names(value: Any, sub: dict[str, Any], _: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [p for name in value for p in violations(name, sub, root, f"{at}[{name!r}]")]


def _pattern_properties(value: Any, subs: dict[str, Any], _: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [
        p
        for name, item in value.items()
        for pattern, sub in subs.items()
        if re.search(pattern, name)
        for p in violations(item, sub, root, f"{at}.{name}")
    ]


def _check(test: Callable[[Any, Any], bool], what: str) -> Callable[..., list[str]]:
    def keyword(value: Any, argument: Any, _schema: Any, _root: Any, at: str) -> list[str]:
        return [] if test(value, argument) else [f"{at}: {value!r} fails {what} {argument!r}"]

    return keyword


def _applies(kind: type | tuple[type, ...], test: Callable[[Any, Any], bool]) -> Any:
    return lambda v, a: not isinstance(v, kind) or isinstance(v, bool) or test(v, a)


_KEYWORDS: dict[str, Callable[..., list[str]]] = {
    "$ref": _ref,
    "properties": _properties,
    "additionalProperties": _additional,
    "oneOf": _one_of,
    "anyOf": _any_of,
    "items": _items,
    "required": _check(lambda v, a: not isinstance(v, dict) or set(a) <= set(v), "required"),
    "type": _check(lambda v, a: _TYPES[a](v), "type"),
    "const": _check(lambda v, a: v == a and type(v) is type(a), "const"),
    "enum": _check(lambda v, a: v in a, "enum"),
    "pattern": _check(_applies(str, lambda v, a: re.search(a, v) is not None), "pattern"),
    "format": _check(_applies(str, lambda v, a: _FORMATS[a](v)), "format"),
    "minLength": _check(_applies(str, lambda v, a: len(v) >= a), "minLength"),
    "maxLength": _check(_applies(str, lambda v, a: len(v) <= a), "maxLength"),
    "minItems": _check(_applies(list, lambda v, a: len(v) >= a), "minItems"),
    "maxItems": _check(_applies(list, lambda v, a: len(v) <= a), "maxItems"),
    "maxProperties": _check(_applies(dict, lambda v, a: len(v) <= a), "maxProperties"),
    "propertyNames": _property_names,
    "patternProperties": _pattern_properties,
    "minimum": _check(_applies((int, float), lambda v, a: v >= a), "minimum"),
    "maximum": _check(_applies((int, float), lambda v, a: v <= a), "maximum"),
    "exclusiveMinimum": _check(_applies((int, float), lambda v, a: v > a), "exclusiveMinimum"),
    "exclusiveMaximum": _check(_applies((int, float), lambda v, a: v < a), "exclusiveMaximum"),
}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


# --- drift --------------------------------------------------------------------------------------


def test_checked_in_files_match_the_models() -> None:
    problems = drift()
    assert not problems, (
        "the exported contract drifted from the models: "
        + "; ".join(problems)
        + ". Run `make schemas` and commit schemas/json and schemas/asyncapi.json."
    )


def test_export_is_deterministic() -> None:
    assert render() == render()
    for text in render().values():
        assert text.endswith("}\n")
        assert (
            text
            == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )


def test_check_names_missing_changed_and_extra_files(tmp_path: Path) -> None:
    write(tmp_path)
    assert drift(tmp_path) == []
    (tmp_path / JSON_DIR / "log.archived.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / JSON_DIR / "backup.run.json").unlink()
    (tmp_path / JSON_DIR / "log.renamed.json").write_text("{}\n", encoding="utf-8")
    problems = drift(tmp_path)
    assert "json/log.archived.json: differs from the models" in problems
    assert "json/backup.run.json: missing" in problems
    assert any(p.startswith("json/log.renamed.json: extra") for p in problems)
    write(tmp_path)
    assert drift(tmp_path) == []
    assert not (tmp_path / JSON_DIR / "log.renamed.json").exists()


# --- JSON Schema ------------------------------------------------------------------------------


def test_every_message_type_and_record_is_exported() -> None:
    expected = {*MESSAGE_TYPES, "dead_letter", "node_heartbeat", "service_health"}
    assert set(json_schemas()) == expected
    assert {p.stem for p in (ROOT / JSON_DIR).glob("*.json")} == expected
    assert set(EXAMPLES) == set(MESSAGE_TYPES), "add an example for every message type"


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_exported_schema_is_well_formed(name: str) -> None:
    schema = json.loads((ROOT / JSON_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == DIALECT
    assert re.fullmatch(r"https://tidemark\.dev/schemas/[a-z_.]+?(\.v\d+)?\.json", schema["$id"])
    assert schema["title"]
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])
    defs = schema.get("$defs", {})
    for ref in refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in defs, ref
    # Strictness survives the export: every object model refuses unknown fields.
    for sub in (schema, *defs.values()):
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, sub.get("title")


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_message_schema_pins_type_and_version(message_type: str) -> None:
    model = MESSAGE_TYPES[message_type]
    schema = json_schemas()[message_type]
    version = model.SCHEMA_VERSION
    assert schema["$id"] == f"https://tidemark.dev/schemas/{message_type}.v{version}.json"
    assert schema["properties"]["type"] == {"const": message_type}
    assert schema["properties"]["schema_version"] == {"const": model.SCHEMA_VERSION}
    assert {"type", "schema_version", "source", "correlation_id", "data"} <= set(schema["required"])


# --- round trip -------------------------------------------------------------------------------


def nats_match(wildcard: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` the rest (one token or more)."""
    pattern, tokens = wildcard.split("."), subject.split(".")
    for i, want in enumerate(pattern):
        if want == ">":
            return len(tokens) > i
        if i >= len(tokens) or (want != "*" and want != tokens[i]):
            return False
    return len(tokens) == len(pattern)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_example_round_trips_through_decode_and_its_subject(message_type: str) -> None:
    message = example(message_type)
    subject = subject_for(message, node=NODE)
    model = MESSAGE_TYPES[message_type]
    assert nats_match(wildcard(model), subject), f"{subject} is not under {wildcard(model)}"
    assert "{" not in subject
    assert " " not in subject
    decoded = decode(message.model_dump_json().encode(), subject=subject)
    assert decoded == message
    assert type(decoded.data) is model


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_example_satisfies_its_exported_schema(message_type: str) -> None:
    schema = json_schemas()[message_type]
    document = as_json(example(message_type))
    assert violations(document, schema, schema) == []

    # The schema refuses what decode() refuses: an unknown field, or a foreign type.
    document["data"]["surprise"] = 1
    assert violations(document, schema, schema)
    other = next(t for t in MESSAGE_TYPES if t != message_type)
    assert violations(as_json(example(message_type)) | {"type": other}, schema, schema)


def test_nats_match() -> None:
    assert nats_match("tm.evt.log.archived.*", "tm.evt.log.archived.orders-db")
    assert not nats_match("tm.evt.log.archived.*", "tm.evt.log.archived")
    assert not nats_match("tm.evt.log.archived.*", "tm.evt.log.archived.a.b")
    assert nats_match("tm.dlq.>", "tm.dlq.tm.cmd.executor.any.backup")
    assert not nats_match("tm.dlq.>", "tm.dlq")


# --- AsyncAPI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / ASYNCAPI_FILE).read_text(encoding="utf-8"))
    return document


def test_asyncapi_document_shape(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"]
    assert asyncapi["info"]["version"]
    assert asyncapi["defaultContentType"] == "application/json"
    component_key = re.compile(r"^[\w.\-]+$")
    for section in ("channels", "operations"):
        assert all(component_key.match(key) for key in asyncapi[section])
    for section in asyncapi["components"].values():
        assert all(component_key.match(key) for key in section)
    # Only fields AsyncAPI 3.0.0 defines for each object (its objects forbid any others).
    common = {"title", "summary", "description", "tags", "externalDocs", "bindings"}
    for channel in asyncapi["channels"].values():
        assert set(channel) <= common | {"address", "messages", "parameters", "servers"}
        for parameter in channel.get("parameters", {}).values():
            assert set(parameter) <= {"description", "enum", "default", "examples", "location"}
    for operation in asyncapi["operations"].values():
        assert set(operation) <= common | {"action", "channel", "messages", "reply", "traits"}
    for message in asyncapi["components"]["messages"].values():
        allowed = {"name", "contentType", "headers", "payload", "correlationId", "examples"}
        assert set(message) <= common | allowed | {"deprecated", "traits"}
    for schema in asyncapi["components"]["schemas"].values():
        if "schema" in schema:  # a Multi Format Schema Object
            assert set(schema) == {"schemaFormat", "schema"}
    # Self-contained: every reference is local and lands on something.
    for ref in refs(asyncapi):
        assert resolve(asyncapi, ref) is not None, ref


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_asyncapi_has_channel_message_and_operation(
    asyncapi: dict[str, Any], message_type: str
) -> None:
    model = MESSAGE_TYPES[message_type]
    channel = asyncapi["channels"][message_type]
    assert channel["address"] == model.SUBJECT
    placeholders = set(re.findall(r"\{(\w+)\}", model.SUBJECT))
    assert set(channel.get("parameters", {})) == placeholders
    assert all(p["description"] for p in channel.get("parameters", {}).values())
    assert channel["messages"] == {message_type: {"$ref": f"#/components/messages/{message_type}"}}

    message = asyncapi["components"]["messages"][message_type]
    assert message["name"]
    assert message["title"]
    assert message["summary"] == model.SUMMARY
    assert message["contentType"] == "application/json"
    headers = resolve(asyncapi, message["headers"]["$ref"])
    assert {"Nats-Msg-Id", "traceparent"} <= set(headers["properties"])
    payload = resolve(asyncapi, message["payload"]["$ref"])
    assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
    assert payload["schema"]["properties"]["type"] == {"const": message_type}

    operation = asyncapi["operations"][f"send.{message_type}"]
    assert operation["action"] == "send"
    assert operation["channel"] == {"$ref": f"#/channels/{message_type}"}
    # AsyncAPI 3: an operation's messages must be messages of its channel.
    assert operation["messages"] == [{"$ref": f"#/channels/{message_type}/messages/{message_type}"}]


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_asyncapi_payload_accepts_the_example(asyncapi: dict[str, Any], message_type: str) -> None:
    payload = asyncapi["components"]["schemas"][message_type]["schema"]
    assert violations(as_json(example(message_type)), payload, asyncapi) == []


def test_asyncapi_has_the_dead_letter_channel(asyncapi: dict[str, Any]) -> None:
    channel = asyncapi["channels"]["dead_letter"]
    assert channel["address"] == "tm.dlq.{subject}"
    assert set(channel["parameters"]) == {"subject"}
    assert asyncapi["operations"]["send.dead_letter"]["action"] == "send"
    assert "service_health" in asyncapi["components"]["schemas"]


# --- docs/contract.md -------------------------------------------------------------------------

CONTRACT_DOC = Path(__file__).parents[2] / "docs" / "contract.md"


def test_contract_page_lists_every_message_type() -> None:
    rows = re.findall(
        r"^\| `([a-z_.]+)` \| (command|event) \| `([^`]+)` \| (.+?) \|$",
        CONTRACT_DOC.read_text(encoding="utf-8"),
        flags=re.M,
    )
    documented = {name: (kind, subject, summary) for name, kind, subject, summary in rows}
    assert documented == {
        name: (model.KIND, model.SUBJECT, model.SUMMARY) for name, model in MESSAGE_TYPES.items()
    }, "update the message table in docs/contract.md"


def test_contract_page_example_decodes() -> None:
    text = CONTRACT_DOC.read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)```", text, flags=re.S)
    assert block is not None
    message = decode(block.group(1).encode(), subject="tm.evt.log.archived.orders-db")
    assert message.type == "log.archived"
    assert str(message.data.first) == "16/B3000000"
    schema = json_schemas()["log.archived"]
    assert violations(json.loads(block.group(1)), schema, schema) == []


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("tl-00000001", Timeline(id=1)),
        ("tl-0000000A", Timeline(id=10)),
        ("inc-2000", Incarnation(resetlogs_id=2000, resetlogs_scn=Scn(value=0))),
    ],
)
def test_a_lineage_key_has_one_parser(key: str, expected: object) -> None:
    assert lineage_from_key(key) == expected
    assert lineage_from_key(key).key == key


@pytest.mark.parametrize("key", ["tl-", "tl-xyz", "inc-", "inc-1a", "tl1", "", "x-1"])
def test_a_malformed_lineage_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="is not a lineage key"):
        lineage_from_key(key)


def test_an_incarnation_key_takes_where_it_branched() -> None:
    lineage = lineage_from_key("inc-7", branch_at=Scn(value=4242))
    assert lineage == Incarnation(resetlogs_id=7, resetlogs_scn=Scn(value=4242))

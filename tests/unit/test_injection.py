"""Injection and traversal: every name that reaches RMAN, SQL, a file path, a subject or an object
key is refused at the model or validator boundary with a message — or provably neutralised
(quoted as a literal, normalised) where it is used.

Where a value goes, and what guards it:

| value                           | reaches                         | guard                       |
|---------------------------------|---------------------------------|-----------------------------|
| database uid, node name         | object keys, NATS subjects      | `schemas._base` patterns    |
| DB name, Oracle identifier, tag | RMAN scripts, backup labels     | `schemas._base` patterns    |
| backup id, target name          | object keys, recovery settings  | `schemas.messages` patterns |
| object key                      | the store (filesystem driver)   | `ObjectKey`, `validate_key` |
| clone data dir                  | pg_ctl, initdb, the filesystem  | `AbsPath`                   |
| RMAN tag, command id, paths     | the RMAN script                 | `scripts.py` patterns       |
| RMAN piece name (manifest)      | the restore's staging directory | `PieceName`                 |
| recovery settings               | postgresql.auto.conf            | allow-list, quoted literal  |
| base backup tar members         | the data directory              | `tarfile.data_filter`       |
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from pydantic import TypeAdapter, ValidationError

from schemas import (
    BackupTag,
    DatabaseUid,
    DbName,
    NodeName,
    ObjectKey,
    OracleIdentifier,
)
from schemas.messages import CloneSpec, RestorePlan, RunRestore, TargetName
from schemas.messages.common import AbsPath, BackupId
from schemas.messages.policies import CronExpr
from services.blobstore import InvalidKey
from services.blobstore._keys import validate_key
from services.engines.base import EngineError
from services.engines.oracle.backup import Piece
from services.engines.oracle.scripts import BackupScript, Channels, RestoreScript, UntilScn
from services.engines.postgres.extract import _safe_filter
from services.engines.postgres.oscmd import OsUser
from services.engines.postgres.recovery_conf import _quote
from services.engines.postgres.restore import recovery_settings
from tests.fuzzing import ATTACKS, FUZZ, strings
from tests.unit.test_schema_contract import example

pytestmark = pytest.mark.unit


def refuses(check: Callable[[str], Any], value: str) -> str:
    """The message `check` refuses `value` with; fails if it accepts it."""
    try:
        accepted = check(value)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]) for e in exc.errors())
    except (InvalidKey, ValueError) as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{value!r} accepted as {accepted!r}")
    assert message.strip(), f"{value!r} refused without a message"
    return message


def adapter(kind: Any) -> Callable[[str], Any]:
    return TypeAdapter(kind).validate_python


def field(model: Any, name: str, **others: Any) -> Callable[[str], Any]:
    return lambda value: model(**{name: value, **others})


STAGE = Channels(stage_dir="/var/tmp/stage")
ORACLE_SCRIPT = {"command_id": "job-1", "tag": "NIGHTLY", "channels": STAGE}
RESTORE_SCRIPT = {
    "command_id": "job-1",
    "dbid": 42,
    "controlfile_piece": "/var/tmp/stage/c-42",
    "stage_dir": "/var/tmp/stage",
    "until": UntilScn(scn=5),
}
PIECE = {"key": "erp/backups/b1/p1", "size": 1, "crc32c": "AAAAAA==", "tag": "T"}

# Each name, and the few attacks that are (harmlessly) valid values of it.
NAMES: dict[str, tuple[Callable[[str], Any], frozenset[str]]] = {
    "database uid": (adapter(DatabaseUid), frozenset()),
    "node name": (adapter(NodeName), frozenset()),
    "database name": (adapter(DbName), frozenset()),
    "oracle identifier": (adapter(OracleIdentifier), frozenset({"a" * 64})),
    "backup tag": (adapter(BackupTag), frozenset()),
    "backup id": (adapter(BackupId), frozenset({"a" * 64})),
    "recovery target name": (field(TargetName, "name"), frozenset()),
    "rman tag": (field(BackupScript, "tag", command_id="j", channels=STAGE), frozenset()),
    "rman command id": (field(BackupScript, "command_id", tag="T", channels=STAGE), {"a" * 64}),
    "rman piece name": (field(Piece, "name", **PIECE), frozenset({"a" * 64})),
    "object key": (adapter(ObjectKey), frozenset({"a" * 64, ".hidden"})),
}
"""(The store's own `validate_key` is not here: a store key may hold quotes, spaces or any
letter, as GCS allows, because it never reaches a shell or a script; it refuses only what could
escape a prefix. See the object key tests below.)"""


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: repr(a)[:40])
def test_names_refuse_the_classic_attacks(name: str, attack: str) -> None:
    check, harmless = NAMES[name]
    if attack in harmless:
        check(attack)
        return
    refuses(check, attack)


ORACLE_GRAMMAR = frozenset({"database name", "oracle identifier"})


@FUZZ
@given(value=strings())
def test_an_accepted_name_cannot_carry_a_quote_separator_or_line_break(value: str) -> None:
    for name, (check, _) in NAMES.items():
        try:
            check(value)
        except (ValidationError, InvalidKey, ValueError):
            continue
        dangerous = set("'\"`$;|&<>\\ \t\r\n\x00%*") | {"\u2028", "\u202e", "\ufeff"}
        if name in ORACLE_GRAMMAR:
            # `$` is part of Oracle's identifier grammar (SYS$USERS, V$DATABASE); these names
            # reach SQL and RMAN scripts (files), never a shell.
            dangerous -= {"$"}
        assert not dangerous & set(value), f"{name} accepted {value!r}"
        assert value.isascii(), f"{name} accepted {value!r}"
        if name != "object key":
            assert "/" not in value, f"{name} accepted {value!r}"
            assert ".." not in value, f"{name} accepted {value!r}"


# -- object keys: the schema and the store agree on what escapes -----------------------------------

ESCAPING_KEYS = [
    "../../etc/passwd",
    "orders/../../etc",
    "orders/./x",
    "/etc/passwd",
    "orders//x",
    "orders/",
    "..",
    "orders/..",
    "orders\\..\\x",
    "orders/\x00",
    "orders/x\ny",
    "orders/%2e%2e/x",  # not an escape for a store, but not in the key alphabet either
    "orders/\uff0e\uff0e/x",
    "a" * 1025,
]


@pytest.mark.parametrize("key", ESCAPING_KEYS, ids=repr)
def test_object_keys_that_could_escape_are_refused_by_schema_and_store(key: str) -> None:
    refuses(adapter(ObjectKey), key)
    # `%2e%2e` and fullwidth dots are names, not `..`, to a filesystem and to GCS alike: the
    # store may keep them; the contract's narrower alphabet refuses them anyway.
    if key not in ("orders/%2e%2e/x", "orders/\uff0e\uff0e/x"):
        refuses(validate_key, key)


def test_a_dot_segment_is_a_schema_key_but_reserved_by_the_store() -> None:
    assert adapter(ObjectKey)("orders/.lock") == "orders/.lock"
    assert "reserved" in refuses(validate_key, "orders/.lock")


# -- paths: clone data directories -----------------------------------------------------------------

BAD_PATHS = [
    "relative/dir",
    "../../etc",
    "/var/lib/../../etc",
    "/var/lib/./pg",
    "/var/lib/pg/..",
    "/var/lib/pg; rm -rf /",
    "/var/lib/$(rm -rf /)",
    "/var/lib/`id`",
    "/var/lib/pg\narchive_command = 'x'",
    "/var/lib/pg\x00",
    "/var/lib/'pg'",
    '/var/lib/"pg"',
    "/var/lib/pg dir",
    "/var/lib/%2e%2e/etc",
    "/var/lib/\uff0e\uff0e/etc",
    "/var/lib/pg\u202e",
    "~/pg",
    "C:\\pg",
    "/" + "a" * 1024,
    "",
]


@pytest.mark.parametrize("path", BAD_PATHS, ids=repr)
def test_a_clone_directory_must_be_a_plain_absolute_path(path: str) -> None:
    refuses(adapter(AbsPath), path)
    refuses(field(CloneSpec, "data_dir", port=5433), path)


# -- RMAN scripts ----------------------------------------------------------------------------------


# Where an RMAN path points is the executor's own choice (its staging directory, and piece
# names checked above); what the script must never get is a character that ends the literal.
OUTSIDE_THE_PATH_ALPHABET = [a for a in ATTACKS if not re.fullmatch(r"[A-Za-z0-9._/-]*", a)]


@pytest.mark.parametrize("attack", OUTSIDE_THE_PATH_ALPHABET, ids=lambda a: repr(a)[:40])
@pytest.mark.parametrize("where", ["stage_dir", "controlfile_piece"])
def test_rman_script_paths_refuse_the_attacks(where: str, attack: str) -> None:
    others = {k: v for k, v in RESTORE_SCRIPT.items() if k != where}
    refuses(field(RestoreScript, where, **others), "/var/tmp/" + attack)


def test_a_rendered_rman_script_quotes_only_what_the_patterns_let_through() -> None:
    script = BackupScript(**ORACLE_SCRIPT).render()
    for line in script.splitlines():
        assert line.count("'") % 2 == 0, line  # every literal closed on its own line


# -- RMAN piece names from a manifest --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../etc/cron.d/x", "/etc/cron.d/x", "..", ".", ".profile", "a/b", "x\x00", ""]
)
def test_a_manifest_cannot_name_a_piece_outside_the_staging_directory(name: str) -> None:
    # The restore stages each piece at `stage / piece.name`; this was a plain `str`.
    refuses(field(Piece, "name", **PIECE), name)


# -- PostgreSQL recovery settings ------------------------------------------------------------------


def run_restore(recovery: dict[str, str]) -> RunRestore:
    command = example("restore.run").data
    plan = command.plan.model_copy(update={"recovery": recovery})  # as if the model let it by
    restored: RunRestore = command.model_copy(update={"plan": plan})
    return restored


@pytest.mark.parametrize(
    "name",
    [
        "archive_command",
        "restore_command",
        "shared_preload_libraries",
        "Recovery_Target_Lsn",
        "recovery_target_lsn\narchive_command",
        "recovery_target_lsn = '0/0'\narchive_command",
        "recovery_target_lsn'",
        "include",
        "recovery_target_lsn ",
    ],
)
def test_a_restore_plan_may_set_only_recovery_targets(name: str) -> None:
    with pytest.raises(EngineError, match="which a restore may not set"):
        recovery_settings(run_restore({name: "x"}))


@pytest.mark.parametrize(
    "name", ["Recovery_Target", "recovery_target\narchive_command", "x;y", "", "x" * 64]
)
def test_a_restore_plan_refuses_a_setting_name_that_is_not_lower_snake(name: str) -> None:
    plan = example("restore.run").data.plan.model_dump()
    message = refuses(lambda n: RestorePlan.model_validate({**plan, "recovery": {n: "x"}}), name)
    assert "lower_snake" in message


@pytest.mark.parametrize(
    "value", ["x\narchive_command = 'rm -rf /'", "x\r\nport = 1", "x\x00y", "\n"], ids=repr
)
def test_a_recovery_value_with_a_line_break_or_nul_is_refused(value: str) -> None:
    with pytest.raises(EngineError, match="newlines"):
        _quote(value)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("'; archive_command = 'rm -rf /", "'''; archive_command = ''rm -rf /'"),
        ("x\\' y", "'x\\\\'' y'"),
        ("$(rm -rf /)", "'$(rm -rf /)'"),
        ("`id`", "'`id`'"),
    ],
)
def test_a_recovery_value_is_written_as_one_quoted_literal(value: str, literal: str) -> None:
    assert _quote(value) == literal


def test_a_recovery_target_name_cannot_carry_a_quote_or_line_break() -> None:
    for attack in ("x'; archive_command='y", "x\ny", "x y", "'", "x" * 64):
        refuses(field(TargetName, "name"), attack)


# -- base backup tar members -----------------------------------------------------------------------

USER = OsUser(name="postgres", uid=70, gid=70, groups=(70,), home="/var/lib/postgresql")


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "info",
    [
        member("../../etc/cron.d/x"),
        member("base/../../x"),
        member("pg_wal", tarfile.SYMTYPE, "/etc"),
        member("x", tarfile.SYMTYPE, "../../etc/passwd"),
        member("x", tarfile.LNKTYPE, "/etc/passwd"),
        member("dev", tarfile.CHRTYPE),
    ],
    ids=lambda m: f"{m.name}->{m.linkname}" if m.linkname else m.name,
)
def test_a_base_backup_member_cannot_land_outside_the_data_directory(
    info: tarfile.TarInfo, tmp_path: Any
) -> None:
    with pytest.raises(tarfile.FilterError):
        _safe_filter(USER)(info, str(tmp_path))


def test_an_absolute_base_backup_member_lands_inside_the_data_directory(tmp_path: Any) -> None:
    accepted = _safe_filter(USER)(member("/etc/cron.d/x"), str(tmp_path))
    assert accepted is not None
    assert (accepted.name, accepted.uid, accepted.gid) == ("etc/cron.d/x", 70, 70)


# -- cron ------------------------------------------------------------------------------------------


def test_a_cron_with_unicode_line_breaks_is_normalised_to_plain_fields() -> None:
    assert adapter(CronExpr)("0\u20281 *\t* \u3000*") == "0 1 * * *"


@pytest.mark.parametrize(
    "value", ["0 1 * * *; rm -rf /", "0 1 * * *\n0 2 * * * x", "$(id) * * * *", "0 1 * * ' OR 1"]
)
def test_a_cron_with_anything_but_cron_is_refused(value: str) -> None:
    refuses(adapter(CronExpr), value)

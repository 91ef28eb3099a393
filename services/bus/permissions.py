"""Who may publish and subscribe to what on the bus: the one permissions matrix.

    role       publishes (besides the JetStream API)              subscribes
    planner    executor commands (migration steps too), its own    replies, tm.qry.planner.>,
               backup command, backup/restore/policy/request/      $SRV.> (its micro service)
               migration/program events, catalog
               queries, dead letters, KV tm_plans + tm_health
    executor   job/backup/restore events, migration progress and   replies
               step failures, dead letters,
               KV tm_nodes + tm_health
    archiver   log.archived and archive alarms, dead letters,      replies
               KV tm_health
    catalog    logs.indexed/log.deleted/window.changed,            replies, tm.qry.catalog.>,
               dead letters, KV tm_health                          $SRV.>
    tool       the planner's commands (tm.cmd.planner.any.*,       replies, tm.evt.>
               migration commands and cutover acks,
               migration programs),
               queries (tm.qry.>); JetStream reads only
    admin      everything                                          everything

Event and command subjects come from the message types each role sends (`wildcard(model)`), so
the matrix cannot name a subject the contract does not have. Only the services dead-letter
(`tm.dlq.>`); only the planner commands the executor.

The JetStream API (`$JS.API.>`) is allowed with the destructive calls denied: no role but admin
deletes or purges a stream or restores a snapshot. The tool user also may not create or change
streams, delete messages or consumers, or create consumers on TM_CMD (which would let it take or
reconfigure the services' work), and may not pull (`CONSUMER.MSG.NEXT`).

`nats_server_users` renders the matrix for `authorization { users = [...] }` in a nats-server
config (the embedded stack). The Helm chart's copy is generated from it:

    python -m services.bus.permissions > deploy/helm/tidemark/templates/_nats-permissions.tpl

(a named template, not a chart file, because the NATS subchart renders it too, where `.Files`
is that chart's); a test fails when the two differ.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from schemas import Payload, wildcard
from schemas.messages import (
    ArchiveAlarm,
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupRequested,
    BackupVerified,
    CancelJob,
    CancelRequest,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobSucceeded,
    LogArchived,
    LogDeleted,
    LogsIndexed,
    PolicyChanged,
    RequestAccepted,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreFailed,
    RestoreProgress,
    RestoreRequested,
    RunBackup,
    RunRestore,
    RunVerify,
    SetPolicy,
    WindowChanged,
)
from schemas.messages.migrations import (
    MIGRATION_COMMANDS,
    MIGRATION_EVENTS,
    MIGRATION_STEPS,
)
from schemas.messages.programs import PROGRAM_COMMANDS, PROGRAM_EVENTS
from schemas.records import DLQ_SUBJECT_PREFIX


class Role(StrEnum):
    """A NATS user of Tidemark. One user per role; every replica of a service shares it."""

    PLANNER = "planner"
    EXECUTOR = "executor"
    ARCHIVER = "archiver"
    CATALOG = "catalog"
    TOOL = "tool"
    """The CLI and platform tools: request backups and restores from the planner, ask the
    catalog and the planner, follow events. Never commands an executor directly."""
    ADMIN = "admin"
    """An operator's user (the `nats` CLI): everything, including deleting streams."""


SERVICE_ROLES: tuple[Role, ...] = (Role.PLANNER, Role.EXECUTOR, Role.ARCHIVER, Role.CATALOG)

INBOX = "_INBOX.>"
JS_API = "$JS.API.>"
JS_ACK = "$JS.ACK.>"
# Flow-control replies of push consumers (KV watches and keys() are ordered push consumers).
JS_FLOW_CONTROL = "$JS.FC.>"
MICRO = "$SRV.>"
DEAD_LETTERS = f"{DLQ_SUBJECT_PREFIX}.>"

# Calls that lose data or replace a stream wholesale: an operator's (admin), never a service's.
JS_DESTRUCTIVE: tuple[str, ...] = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.ACCOUNT.PURGE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.SERVER.>",
    "$JS.API.META.>",
)
# What a tool may not do on top: change the topology, delete messages, reach into the work
# queue's consumers (taking a command there would hide it from its service until ack_wait).
JS_TOOL_DENIED: tuple[str, ...] = (
    *JS_DESTRUCTIVE,
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.API.CONSUMER.CREATE.TM_CMD",
    "$JS.API.CONSUMER.CREATE.TM_CMD.>",
)


def _kv(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def _query(service: str) -> str:
    return f"tm.qry.{service}.>"


def _sends(*models: type[Payload]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(wildcard(m) for m in models))


# What each role sends, by message type: a subject the contract does not have cannot be granted.
SENDS: dict[Role, tuple[type[Payload], ...]] = {
    Role.PLANNER: (
        RequestBackup,  # the scheduler's own backups go through the planner's intake
        RunBackup,
        RunVerify,
        RunRestore,
        CancelJob,
        BackupRequested,
        BackupDeleted,
        RestoreRequested,
        RestoreProgress,
        RestoreFailed,
        PolicyChanged,
        RequestAccepted,
        RequestRejected,
        *MIGRATION_STEPS,  # the engine steps of a migration saga
        *MIGRATION_EVENTS,
        *PROGRAM_EVENTS,
    ),
    Role.EXECUTOR: (
        JobAccepted,
        JobProgress,
        JobSucceeded,
        JobFailed,
        BackupCompleted,
        BackupFailed,
        BackupVerified,
        RestoreProgress,
        RestoreCompleted,
        RestoreFailed,
        # A migration step reports through its job's events; every migration event is the
        # planner's (the saga is the one that knows what a step's result means).
    ),
    Role.ARCHIVER: (LogArchived, ArchiveAlarm),
    Role.CATALOG: (LogsIndexed, LogDeleted, WindowChanged),
    Role.TOOL: (
        RequestBackup,
        RequestRestore,
        SetPolicy,
        CancelRequest,
        *MIGRATION_COMMANDS,  # request, pause, resume, cutover, abort, rollback, cutover_ack
        # A program starts migrations of every database it lists: grant it only to a tool
        # that may migrate them all (its subject names the program, never a database).
        *PROGRAM_COMMANDS,
    ),
}


@dataclass(frozen=True)
class Permissions:
    """One user's permissions, as nats-server's `permissions` map has them."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    """Publish once to the reply subject of a request received (the query services' answers)."""

    def as_config(self) -> dict[str, Any]:
        publish: dict[str, list[str]] = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        out: dict[str, Any] = {
            "publish": publish,
            "subscribe": {"allow": list(self.subscribe_allow)},
        }
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def _service(
    role: Role,
    *,
    kv: tuple[str, ...] = (),
    asks: tuple[str, ...] = (),
    serves: str | None = None,
) -> Permissions:
    return Permissions(
        publish_allow=(
            JS_API,
            JS_ACK,
            JS_FLOW_CONTROL,
            *_sends(*SENDS[role]),
            DEAD_LETTERS,
            *(_query(s) for s in asks),
            *(_kv(b) for b in ("tm_health", *kv)),
        ),
        publish_deny=JS_DESTRUCTIVE,
        subscribe_allow=(INBOX, _query(serves), MICRO) if serves else (INBOX,),
        allow_responses=serves is not None,
    )


MATRIX: dict[Role, Permissions] = {
    Role.PLANNER: _service(Role.PLANNER, kv=("tm_plans",), asks=("catalog",), serves="planner"),
    Role.EXECUTOR: _service(Role.EXECUTOR, kv=("tm_nodes",)),
    Role.ARCHIVER: _service(Role.ARCHIVER),
    Role.CATALOG: _service(Role.CATALOG, serves="catalog"),
    Role.TOOL: Permissions(
        publish_allow=(JS_API, JS_FLOW_CONTROL, *_sends(*SENDS[Role.TOOL]), "tm.qry.>"),
        publish_deny=JS_TOOL_DENIED,
        subscribe_allow=(INBOX, "tm.evt.>"),
    ),
    Role.ADMIN: Permissions(publish_allow=(">",), subscribe_allow=(">",)),
}


def matrix_document() -> dict[str, dict[str, Any]]:
    """The matrix as JSON-ready data, keyed by role (what the Helm chart reads)."""
    return {role.value: MATRIX[role].as_config() for role in Role}


def user_name(role: Role) -> str:
    return f"tidemark-{role.value}"


def nats_server_users(passwords: dict[Role, str]) -> str:
    """`authorization { users = [...] }` for a nats-server config, one user per role given.

    Strings are JSON-quoted, which nats-server's config parser reads as plain strings (no
    `$variable` expansion inside quotes).
    """
    entries = []
    for role, password in passwords.items():
        entry = {
            "user": user_name(role),
            "password": password,
            "permissions": MATRIX[role].as_config(),
        }
        entries.append("    " + json.dumps(entry))
    return "authorization {\n  users = [\n" + ",\n".join(entries) + "\n  ]\n}\n"


def chart_template() -> str:
    """The Helm chart's `tidemark.natsPermissions`: the matrix as JSON (which is YAML)."""
    return (
        "{{/* Generated by `python -m services.bus.permissions` from services/bus/permissions.py:\n"
        "edit that, not this. The NATS permissions matrix, one entry per role. */}}\n"
        '{{- define "tidemark.natsPermissions" -}}\n'
        + json.dumps(matrix_document(), indent=2)
        + "\n{{- end }}\n"
    )


def main() -> None:
    sys.stdout.write(chart_template())


if __name__ == "__main__":
    main()

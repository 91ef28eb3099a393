"""Export the contract for tools in any language: JSON Schema per message, one AsyncAPI 3 document.

    python -m schemas.export           write schemas/json/*.json and schemas/asyncapi.json
    python -m schemas.export --check   write nothing; exit 1 naming every file that drifted

Each message's schema is its whole envelope, with `type` and `schema_version` pinned, so a
consumer can pick the schema from those two fields alone. Output is deterministic (sorted keys,
two-space indent, trailing newline) so the checked-in files diff cleanly and a test can compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas._base import json_schema_extra_const
from schemas.envelope import Envelope, Payload
from schemas.records import DLQ_SUBJECT_PREFIX, DeadLetter, NodeHeartbeat, ServiceHealth
from schemas.subjects import MESSAGE_TYPES, STREAMS

ROOT = Path(__file__).parent
JSON_DIR = "json"
ASYNCAPI_FILE = "asyncapi.json"

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
ID_BASE = "https://tidemark.dev/schemas/"
# The version of the AsyncAPI document as a whole; each message also versions itself.
CONTRACT_VERSION = "0.1.0"

RECORDS: dict[str, type[BaseModel]] = {
    "dead_letter": DeadLetter,
    "node_heartbeat": NodeHeartbeat,
    "service_health": ServiceHealth,
}

PARAMETERS = {
    "node": "The node's name as one subject token (dots become `_`), or `any` when whichever "
    "worker is free may take the command.",
    "database": "The database uid (`DatabaseRef.uid`); `tm.evt.*.*.<uid>` follows one database.",
    "target": "A migration's target database uid; migration subjects end `<source>.<target>`, "
    "so `tm.*.*.*.migration.*.<uid>.*` follows every migration out of one database.",
    "program": "A migration program's id (`wave-3`); `tm.evt.program.*.<program>` follows one "
    "program.",
    "subject": "The subject the message was first published on (several tokens).",
}

HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": "The envelope `id` (UUIDv7). JetStream drops a second publish with the "
            "same id inside the stream's duplicate window, so a retried publish is harmless.",
        },
        "traceparent": {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C Trace Context of the operation that published the message.",
        },
    },
    "required": ["Nats-Msg-Id"],
}


def message_schema(model: type[Payload]) -> dict[str, Any]:
    """The JSON Schema of one message type, as a whole envelope."""
    schema = Envelope[model].model_json_schema()  # type: ignore[valid-type]
    json_schema_extra_const(schema, "type", model.TYPE)
    json_schema_extra_const(schema, "schema_version", model.SCHEMA_VERSION)
    schema["title"] = f"{model.__name__}Envelope"
    schema["description"] = f"{model.SUMMARY} Published on `{model.SUBJECT}`."
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}{model.TYPE}.v{model.SCHEMA_VERSION}.json",
    } | schema


def record_schema(name: str) -> dict[str, Any]:
    schema = RECORDS[name].model_json_schema()
    return {"$schema": DIALECT, "$id": f"{ID_BASE}{name}.json"} | schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every exported schema by file stem: message types, then the records."""
    schemas = {name: message_schema(model) for name, model in sorted(MESSAGE_TYPES.items())}
    schemas.update((name, record_schema(name)) for name in RECORDS)
    return schemas


def _embedded(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A schema as it sits inside the AsyncAPI document.

    Inside a bigger document, `#/$defs/X` would resolve against the document's root for most
    tools, so references are rewritten to absolute pointers and `$id`/`$schema` (which would
    make it a separate resource) are left out; `schemaFormat` names the dialect instead.
    """
    text = json.dumps({k: v for k, v in schema.items() if k not in ("$id", "$schema")})
    # Only a reference (or a discriminator mapping, also a reference) is a string that starts so.
    text = text.replace('"#/$defs/', f'"#/components/schemas/{name}/schema/$defs/')
    return {"schemaFormat": SCHEMA_FORMAT, "schema": json.loads(text)}


def _stream_of(subject: str) -> str:
    for stream in STREAMS:
        if any(subject.startswith(pattern.removesuffix(">")) for pattern in stream.subjects):
            return f"Stream {stream.name} ({stream.retention} retention): {stream.description}"
    raise ValueError(f"no stream captures {subject!r}")


def _channel(name: str, address: str, title: str) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "title": title,
        "description": _stream_of(address),
        "messages": {name: {"$ref": f"#/components/messages/{name}"}},
    }
    parameters = {p: {"description": d} for p, d in PARAMETERS.items() if f"{{{p}}}" in address}
    if parameters:
        channel["parameters"] = parameters
    return channel


def _message(name: str, title: str, summary: str, *, enveloped: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{name}"},
    }
    if enveloped:
        message["headers"] = {"$ref": "#/components/schemas/NatsHeaders"}
        message["correlationId"] = {
            "description": "The operation this message belongs to.",
            "location": "$message.payload#/correlation_id",
        }
    return message


def _send(name: str, summary: str, who: str) -> dict[str, Any]:
    return {
        "action": "send",
        "channel": {"$ref": f"#/channels/{name}"},
        "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
        "summary": summary,
        "description": who,
    }


def asyncapi(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One AsyncAPI 3.0.0 document: a channel, message and send operation per message type."""
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name, model in sorted(MESSAGE_TYPES.items()):
        title = f"{model.__name__} (v{model.SCHEMA_VERSION})"
        who = (
            "Sent by platform tools or the planner; taken once by one worker."
            if model.KIND == "command"
            else "Sent by the service that observed the fact; any consumer may replay it."
        )
        channels[name] = _channel(name, model.SUBJECT, title)
        messages[name] = _message(name, title, model.SUMMARY, enveloped=True)
        messages[name]["tags"] = [{"name": model.KIND}]
        operations[f"send.{name}"] = _send(name, model.SUMMARY, who)

    dlq = "dead_letter"
    summary = (DeadLetter.__doc__ or "").splitlines()[0]
    channels[dlq] = _channel(dlq, f"{DLQ_SUBJECT_PREFIX}.{{subject}}", "DeadLetter")
    messages[dlq] = _message(dlq, "DeadLetter", summary, enveloped=False)
    operations[f"send.{dlq}"] = _send(
        dlq,
        summary,
        "Sent by any consumer that gives up on a message (invalid, terminal, or out of "
        "deliveries), with the original payload and the reason.",
    )

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tidemark",
            "version": CONTRACT_VERSION,
            "description": "Commands and events of the Tidemark backup control plane on NATS "
            "JetStream. Every message except dead letters is a JSON envelope whose `type` and "
            "`schema_version` name its payload model; its `id` is also the Nats-Msg-Id header.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"NatsHeaders": HEADERS}
            | {name: _embedded(name, schema) for name, schema in schemas.items()},
            "messages": messages,
        },
    }


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every exported file's text, by path relative to the `schemas` package."""
    schemas = json_schemas()
    files = {f"{JSON_DIR}/{name}.json": _dumps(schema) for name, schema in schemas.items()}
    files[ASYNCAPI_FILE] = _dumps(asyncapi(schemas))
    return files


def drift(root: Path = ROOT) -> list[str]:
    """How the files under `root` differ from what the models export; empty when in step."""
    expected = render()
    problems = []
    for path, text in expected.items():
        target = root / path
        if not target.exists():
            problems.append(f"{path}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the models")
    present = {f"{JSON_DIR}/{p.name}" for p in (root / JSON_DIR).glob("*.json")}
    problems.extend(
        f"{path}: extra, no model exports it" for path in sorted(present - expected.keys())
    )
    return problems


def write(root: Path = ROOT) -> list[str]:
    """Bring the files under `root` in step with the models; return what changed."""
    expected = render()
    (root / JSON_DIR).mkdir(exist_ok=True)
    changed = []
    for path, text in expected.items():
        target = root / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(f"{path}: written")
    # A renamed or removed message must not leave its old schema behind for tools to trust.
    for stale in sorted((root / JSON_DIR).glob("*.json")):
        if f"{JSON_DIR}/{stale.name}" not in expected:
            stale.unlink()
            changed.append(f"{JSON_DIR}/{stale.name}: removed")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="report drift, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for problem in problems:
            print(f"schemas/{problem}")
        if problems:
            print("the exported contract is out of date: run `make schemas`", file=sys.stderr)
            return 1
        return 0
    for change in write():
        print(f"schemas/{change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine half of the `dump` method (the Data Pump analogue): one database dumped by
`pg_dump -Fd -j N` into the object store, and restored from there by `pg_restore -j N` into a
target of the same or a newer release, so source and target share nothing but the bucket.

    dump_to_store       the dump, spooled locally, each file uploaded with its size and crc32c,
                        then the source's parity fingerprint and the manifest, last
    read_manifest       the manifest of a finished dump (None: no dump finished there)
    restore_from_store  the dump downloaded and verified, the target database created (marked as
                        this migration's), `pg_restore`, its errors judged against
                        `KNOWN_BENIGN`, and the target's fingerprint for the caller to compare

Layout under `key_prefix`: `manifest.json`, written last and create-only, is what makes a dump
exist; the files of one run are under `run-<time>-<random>/`. A run that died before its manifest
is abandoned, not continued: pg_dump writes a new archive every time (toc.dat carries its start
time), so no object of a dead run could be reused under create-only keys anyway, and two runs
racing each keep to their own keys until one manifest wins. The files of runs the manifest does
not name are deleted once it is written.

The restore is resumable from the store alone. The target database carries a mark, its comment
(`tidemark migration <key_prefix>: restoring`, then `...: restored`): a rerun drops and creates
again a database marked restoring (an interrupted restore, whatever it left), returns a database
marked restored as it is (no second restore after the caller may have opened it), and refuses any
other database of that name: nothing here drops a database it did not create. The database is
created under a name only this migration uses, marked, then renamed, so no crash leaves an
unmarked database behind.

Not carried (pg_dump without `--create` leaves them out, and the mark lives where one would be):
the database's own comment, its ACL and its `ALTER DATABASE ... SET` settings; roles are the
caller's (`logical._copy_roles` before the restore: it fails naming any role the dump needs and
the target lacks). Planner statistics are not restored: ANALYZE before opening the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from schemas import utcnow
from services.blobstore import (
    BlobStore,
    BlobStoreError,
    ObjectConflict,
    TerminalBlobError,
    validate_key,
)
from services.engines.postgres.migration.fingerprints import Fingerprint, fingerprint
from services.engines.postgres.migration.instance import MigrationStepError, PgInstance, dir_size
from services.engines.postgres.migration.logical import USER_SCHEMA, _connect_args, _rows
from services.engines.postgres.oscmd import (
    OsCommandError,
    check_traversable,
    chown_to,
    run_as,
    user_env,
)

T = TypeVar("T")

Progress = Callable[[int, int | None], None]
"""`progress(done, total)` in bytes. Dump: while pg_dump runs, bytes spooled so far and None;
then bytes uploaded of the dump's total. Restore: bytes downloaded of the dump's total."""

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
TOOL_TIMEOUT = 24 * 3600.0
"""Seconds one pg_dump or pg_restore may take: a bound against a hung tool, not a budget."""
POLL_INTERVAL = 1.0
"""Seconds between progress reports while pg_dump runs."""

_RUN = re.compile(r"^run-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")

KNOWN_BENIGN: tuple[tuple[re.Pattern[str], str], ...] = (
    # The schema initdb made: a dump by pg_dump before 11 (or with --clean) creates it again.
    (re.compile(r'schema "public" already exists'), "CREATE SCHEMA public;"),
    # A comment on an extension the restoring role does not own (plpgsql in dumps by pg_dump
    # before 11, any extension a restore without superuser meets): only the comment is lost.
    (re.compile(r"must be owner of extension [^ ]+"), "COMMENT ON EXTENSION "),
)
"""pg_restore errors that lose nothing a migration carries: (the server's message, the start of
the command it answered). A restore whose every error is one of these succeeds; any other error
fails it. A superuser restoring a dump of pg_dump 11 or later into the fresh template0 database
made here meets none of them (tried 15 -> 18: public recreated, trusted extensions, comments)."""

TRANSIENT = re.compile(
    r"terminating connection|server closed the connection|connection to server .* failed|"
    r"could not connect|worker process died|out of shared memory|could not serialize"
)
"""pg_restore errors after which running the restore again can succeed."""


# -- the manifest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DumpFile:
    """One file of the dump directory, as stored: `name` in the directory, `key` in the store."""

    name: str
    key: str
    size: int
    crc32c: str


@dataclass(frozen=True)
class DumpManifest:
    """What a finished dump holds and what it came from: the database's name, release, encoding,
    locale and owner, the roles its objects name (owners, grantees), its files, and the source's
    parity fingerprint taken after the dump (the source fenced: the same contents)."""

    key_prefix: str
    dbname: str
    server_version_num: int
    encoding: str
    collate: str
    ctype: str
    locale_provider: str
    """`c` (libc), `i` (ICU) or `b` (builtin), as `pg_database.datlocprovider`."""
    locale: str | None
    """The ICU or builtin locale; None for libc."""
    owner: str
    roles: tuple[str, ...]
    files: tuple[DumpFile, ...]
    fingerprint: Fingerprint
    created_at: datetime

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "key_prefix": self.key_prefix,
            "dbname": self.dbname,
            "server_version_num": self.server_version_num,
            "encoding": self.encoding,
            "collate": self.collate,
            "ctype": self.ctype,
            "locale_provider": self.locale_provider,
            "locale": self.locale,
            "owner": self.owner,
            "roles": list(self.roles),
            "files": [
                {"name": f.name, "key": f.key, "size": f.size, "crc32c": f.crc32c}
                for f in self.files
            ],
            "bytes": self.bytes,
            "fingerprint": self.fingerprint.to_json(),
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DumpManifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise MigrationStepError(f"dump manifest format {data.get('format')!r} is not known")
        try:
            return cls(
                key_prefix=str(data["key_prefix"]),
                dbname=str(data["dbname"]),
                server_version_num=int(data["server_version_num"]),
                encoding=str(data["encoding"]),
                collate=str(data["collate"]),
                ctype=str(data["ctype"]),
                locale_provider=str(data["locale_provider"]),
                locale=None if data["locale"] is None else str(data["locale"]),
                owner=str(data["owner"]),
                roles=tuple(str(r) for r in data["roles"]),
                files=tuple(
                    DumpFile(str(f["name"]), str(f["key"]), int(f["size"]), str(f["crc32c"]))
                    for f in data["files"]
                ),
                fingerprint=Fingerprint.from_json(data["fingerprint"]),
                created_at=datetime.fromisoformat(data["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MigrationStepError(f"not a dump manifest: {exc!r}") from exc


def _manifest_key(key_prefix: str) -> str:
    return validate_key(f"{key_prefix}/{MANIFEST_NAME}")


async def read_manifest(store: BlobStore, key_prefix: str) -> DumpManifest | None:
    """The manifest of the dump under `key_prefix`, or None when no dump finished there."""
    key = _manifest_key(key_prefix)
    if await store.head(key) is None:
        return None
    try:
        return DumpManifest.from_json(json.loads(await store.get_bytes(key)))
    except BlobStoreError as exc:
        raise MigrationStepError(f"{key}: {exc}", retryable=not _terminal(exc)) from exc


def _terminal(exc: BlobStoreError) -> bool:
    return isinstance(exc, TerminalBlobError)


# -- the spool --------------------------------------------------------------------------------


@contextlib.contextmanager
def _spool_dir(spool: Path, owner: PgInstance, what: str) -> Iterator[Path]:
    """A fresh directory under `spool` owned by `owner`'s OS user (its tool writes or reads
    there); removed with everything in it afterwards, whatever happened."""
    spool.mkdir(parents=True, exist_ok=True)
    try:
        check_traversable(spool, owner.user)
    except OsCommandError as exc:
        raise MigrationStepError(f"spool {spool}: {exc}") from exc
    work = Path(tempfile.mkdtemp(prefix=f"tidemark-{what}-", dir=spool))
    try:
        chown_to(work, owner.user)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _gather_limited(limit: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await `jobs` (coroutines not yet started), at most `limit` at a time, in order."""
    gate = asyncio.Semaphore(max(1, limit))

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


# -- dump -----------------------------------------------------------------------------------------

SOURCE_FACTS_SQL = """
SELECT current_setting('server_version_num'), pg_encoding_to_char(d.encoding), d.datcollate,
       d.datctype, d.datlocprovider,
       coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', ''),
       pg_get_userbyid(d.datdba)
  FROM pg_database d WHERE d.datname = current_database()
"""

# Every role the restore will name: owners (of the database, and of objects in user schemas,
# including those of the bootstrap superuser, which pg_shdepend does not record), grantees and
# policy roles (pg_shdepend of this database).
ROLES_SQL = f"""
SELECT r.rolname FROM pg_roles r WHERE r.oid IN (
  SELECT d.refobjid FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid
   WHERE db.datname = current_database() AND d.refclassid = 'pg_authid'::regclass
  UNION SELECT datdba FROM pg_database WHERE datname = current_database()
  UNION SELECT n.nspowner FROM pg_namespace n WHERE {USER_SCHEMA}
  UNION SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {USER_SCHEMA}
  UNION SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {USER_SCHEMA}
  UNION SELECT t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE {USER_SCHEMA}
  UNION SELECT extowner FROM pg_extension)
ORDER BY 1
"""  # noqa: S608 - constants only


def _run_id() -> str:
    return f"run-{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _pg_dump(source: PgInstance, dbname: str, jobs: int, out: Path) -> None:
    # --no-sync: the spool is scratch; the durable copy is the store's, verified by crc32c.
    source.run(
        "pg_dump",
        [
            "-Fd",
            "-j",
            str(max(1, jobs)),
            "--no-sync",
            "-f",
            str(out),
            *_connect_args(source, dbname),
        ],
        timeout=TOOL_TIMEOUT,
    )


async def _upload(
    store: BlobStore, key: str, path: Path, name: str, done: Callable[[int], None]
) -> DumpFile:
    try:
        info = await store.put_file(key, path)
    except ObjectConflict as exc:
        raise MigrationStepError(
            f"{key} exists with other bytes than this run's {name}: the store holds another "
            "dump's file under this run's key; not overwritten"
        ) from exc
    except BlobStoreError as exc:
        raise MigrationStepError(f"uploading {key}: {exc}", retryable=not _terminal(exc)) from exc
    done(info.size)
    return DumpFile(name=name, key=key, size=info.size, crc32c=info.crc32c)


async def _forget_abandoned_runs(store: BlobStore, manifest: DumpManifest) -> None:
    """Delete the files of runs that died before a manifest (see the module docstring)."""
    kept = {f.key for f in manifest.files}
    prefix = f"{manifest.key_prefix}/"
    async for info in store.list(prefix):
        run = info.key[len(prefix) :].split("/", 1)[0]
        if _RUN.fullmatch(run) and info.key not in kept:
            with contextlib.suppress(BlobStoreError):  # garbage: the next dump's turn
                await store.delete(info.key)


async def dump_to_store(
    source: PgInstance,
    dbname: str,
    *,
    store: BlobStore,
    key_prefix: str,
    jobs: int,
    spool: Path,
    progress: Progress | None = None,
) -> DumpManifest:
    """Dump `dbname` with `source.bindir`'s pg_dump (`-Fd -j jobs`) under `key_prefix` in the
    store, with its manifest (written last), and return the manifest.

    The caller has fenced the source: the fingerprint read after the dump describes what was
    dumped. Rerunnable: a manifest in the store means the dump is done, and it is returned
    without touching the source; a run that died before its manifest is done again.
    """
    validate_key(key_prefix)
    found = await read_manifest(store, key_prefix)
    if found is not None:
        if found.dbname != dbname:
            raise MigrationStepError(
                f"{key_prefix} holds a dump of {found.dbname!r}, not of {dbname!r}"
            )
        return found
    report = progress or (lambda done, total: None)
    facts = await asyncio.to_thread(_rows, source, dbname, SOURCE_FACTS_SQL)
    version, encoding, collate, ctype, provider, locale, owner = facts[0]
    roles = [row[0] for row in await asyncio.to_thread(_rows, source, dbname, ROLES_SQL)]
    run = _run_id()
    with _spool_dir(spool, source, "dump") as work:
        out = work / "dump"
        dumping = asyncio.ensure_future(asyncio.to_thread(_pg_dump, source, dbname, jobs, out))
        while not dumping.done():
            await asyncio.wait([dumping], timeout=POLL_INTERVAL)
            report(await asyncio.to_thread(dir_size, work), None)
        await dumping
        paths = sorted(p for p in out.iterdir() if p.is_file())
        total = sum(p.stat().st_size for p in paths)
        uploaded = 0

        def done(size: int) -> None:
            nonlocal uploaded
            uploaded += size
            report(uploaded, total)

        report(0, total)
        # The source is fenced: its fingerprint, read while the files go up, is the dump's.
        fingerprinting = asyncio.ensure_future(asyncio.to_thread(fingerprint, source, dbname))
        files = await _gather_limited(
            jobs,
            (_upload(store, f"{key_prefix}/{run}/{p.name}", p, p.name, done) for p in paths),
        )
    taken = await fingerprinting
    manifest = DumpManifest(
        key_prefix=key_prefix,
        dbname=dbname,
        server_version_num=int(version),
        encoding=encoding,
        collate=collate,
        ctype=ctype,
        locale_provider=provider,
        locale=locale or None,
        owner=owner,
        roles=tuple(roles),
        files=tuple(files),
        fingerprint=taken,
        created_at=utcnow(),
    )
    body = json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode()
    try:
        await store.put_stream(_manifest_key(key_prefix), body)
    except ObjectConflict:
        # Another run finished first: its dump is the dump (this run's files are garbage now).
        winner = await read_manifest(store, key_prefix)
        if winner is None:
            raise
        manifest = winner
    except BlobStoreError as exc:
        raise MigrationStepError(
            f"writing {_manifest_key(key_prefix)}: {exc}", retryable=not _terminal(exc)
        ) from exc
    await _forget_abandoned_runs(store, manifest)
    return manifest


# -- restore --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreOutcome:
    """What a restore did: the dump's bytes it restored (0 when `reused`), how long the call
    took, the benign errors pg_restore reported (see `KNOWN_BENIGN`), and the target database's
    fingerprint, to compare with the manifest's. `reused`: an earlier run had restored the
    database already; this one only read its fingerprint."""

    bytes: int
    seconds: float
    benign: tuple[str, ...]
    fingerprint: Fingerprint
    reused: bool = False


@dataclass(frozen=True)
class RestoreError:
    """One error pg_restore reported: the server's message (or pg_restore's own) and the
    command it answered, when it names one."""

    message: str
    command: str

    @property
    def is_benign(self) -> bool:
        return any(
            pattern.fullmatch(self.message) and self.command.startswith(command)
            for pattern, command in KNOWN_BENIGN
        )

    def __str__(self) -> str:
        return f"{self.message} ({self.command[:120]})" if self.command else self.message


_ERROR_PREFIX = "pg_restore: error: "
_IGNORED = re.compile(r"^pg_restore: warning: errors ignored on restore: (\d+)$")


def parse_restore_errors(stderr: str) -> tuple[list[RestoreError], int | None]:
    """The errors in pg_restore's stderr, and the count it says it ignored (None: not said).

    Each message starts a line `pg_restore: <level>: `; a server error's text follows `ERROR:  `,
    then its DETAIL/HINT lines, then `Command was: <the command>` (one or more lines).
    """
    errors: list[RestoreError] = []
    ignored: int | None = None
    entry: list[str] | None = None

    def close() -> None:
        if entry is None:
            return
        head = entry[0][len(_ERROR_PREFIX) :]
        message = head.split("ERROR:  ", 1)[1] if "ERROR:  " in head else head
        command = ""
        for i, line in enumerate(entry):
            if line.startswith("Command was: "):
                command = " ".join([line[len("Command was: ") :], *entry[i + 1 :]]).strip()
                break
        errors.append(RestoreError(message.strip(), command))

    for line in stderr.splitlines():
        if line.startswith("pg_restore: "):
            close()
            entry = [line] if line.startswith(_ERROR_PREFIX) else None
            if (count := _IGNORED.match(line)) is not None:
                ignored = int(count[1])
        elif entry is not None and line.strip():
            entry.append(line.strip())
    close()
    return errors, ignored


def _mark(key_prefix: str, state: str) -> str:
    return f"tidemark migration {key_prefix}: {state}"


def _creating_name(key_prefix: str, dbname: str) -> str:
    """The name a database has between CREATE and its mark (see the module docstring)."""
    digest = hashlib.sha256(f"{key_prefix}\0{dbname}".encode()).hexdigest()[:16]
    return f"tidemark_restoring_{digest}"


def _database_mark(target: PgInstance, dbname: str) -> str | None:
    """The database's comment ('' when it has none), or None when there is no such database."""
    # The name comes back too: psql prints an empty comment as an empty line, which reads as
    # no row, and a database without a mark must never pass for an absent one.
    rows = target.rows(
        "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
        "WHERE datname = :'db'",
        {"db": dbname},
    )
    return rows[0][1] if rows else None


def _missing_roles(target: PgInstance, roles: Sequence[str]) -> list[str]:
    present = {row[0] for row in target.rows("SELECT rolname FROM pg_roles")}
    return [role for role in roles if role not in present]


def _create_marked(target: PgInstance, dbname: str, manifest: DumpManifest) -> None:
    """Drop what an earlier run of this migration left, and create `dbname` empty and marked."""
    creating = _creating_name(manifest.key_prefix, dbname)
    # The mark is checked by the DROP itself, not only by the caller's look before: a database
    # made under that name since is left alone. FORCE: the pg_restore of a run that died with
    # its executor may still be connected.
    target.rows(
        "SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database "
        "WHERE datname = :'name' OR (datname = :'db' AND "
        "shobj_description(oid, 'pg_database') = :'restoring') \\gexec",
        {"name": creating, "db": dbname, "restoring": _mark(manifest.key_prefix, "restoring")},
    )
    locale = ""
    variables = {
        "name": creating,
        "db": dbname,
        "enc": manifest.encoding,
        "collate": manifest.collate,
        "ctype": manifest.ctype,
        "owner": manifest.owner,
        "locale": manifest.locale or "",
        "mark": _mark(manifest.key_prefix, "restoring"),
    }
    if manifest.locale_provider == "i":
        locale = "LOCALE_PROVIDER icu ICU_LOCALE :'locale'"
    elif manifest.locale_provider == "b":
        locale = "LOCALE_PROVIDER builtin BUILTIN_LOCALE :'locale'"
    target.rows(
        "CREATE DATABASE :\"name\" TEMPLATE template0 ENCODING :'enc' LC_COLLATE :'collate' "
        f"LC_CTYPE :'ctype' {locale} OWNER :\"owner\"",
        variables,
    )
    target.rows("COMMENT ON DATABASE :\"name\" IS :'mark'", variables)
    target.rows('ALTER DATABASE :"name" RENAME TO :"db"', variables)


def _pg_restore(target: PgInstance, dbname: str, jobs: int, directory: Path) -> list[str]:
    """Run pg_restore; return the benign errors, or raise naming the others."""
    done = run_as(
        target.user,
        [
            target.bindir / "pg_restore",
            "-j",
            str(max(1, jobs)),
            *_connect_args(target, dbname),
            directory,
        ],
        cwd=directory.parent,
        env=user_env(target.user),
        timeout=TOOL_TIMEOUT,
    )
    if done.returncode == 0:
        return []
    errors, ignored = parse_restore_errors(done.stderr)
    fatal = [e for e in errors if not e.is_benign]
    if errors and not fatal and ignored == len(errors):
        return [str(e) for e in errors]
    if not fatal:  # an exit status the errors read do not explain
        raise MigrationStepError(
            f"pg_restore failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}",
            retryable=True,
        )
    missing = sorted(
        {m[1] for e in fatal if (m := re.fullmatch(r'role "(.+)" does not exist', e.message))}
    )
    hint = f"; the target lacks roles {', '.join(missing)}: copy the roles first" if missing else ""
    shown = "; ".join(str(e) for e in fatal[:5])
    more = f" (and {len(fatal) - 5} more)" if len(fatal) > 5 else ""
    raise MigrationStepError(
        f"pg_restore into {dbname}: {len(fatal)} errors: {shown}{more}{hint}",
        retryable=any(TRANSIENT.search(e.message) for e in fatal),
    )


async def _download(
    store: BlobStore,
    item: DumpFile,
    directory: Path,
    target: PgInstance,
    done: Callable[[int], None],
) -> None:
    path = directory / item.name
    try:
        info = await store.get_to_file(item.key, path)
    except BlobStoreError as exc:
        raise MigrationStepError(
            f"downloading {item.key}: {exc}", retryable=not _terminal(exc)
        ) from exc
    if (info.size, info.crc32c) != (item.size, item.crc32c):
        raise MigrationStepError(
            f"{item.key} is {info.size} bytes crc32c {info.crc32c}; the manifest recorded "
            f"{item.size} bytes crc32c {item.crc32c}"
        )
    chown_to(path, target.user)
    done(info.size)


async def restore_from_store(
    target: PgInstance,
    dbname: str,
    *,
    store: BlobStore,
    key_prefix: str,
    jobs: int,
    spool: Path,
    progress: Progress | None = None,
) -> RestoreOutcome:
    """Restore the dump under `key_prefix` into a new database `dbname` on the target with its
    pg_restore (`-j jobs`), owners and grants as dumped, and return what it did with the
    target's fingerprint.

    Rerunnable (see the module docstring for the mark): an interrupted restore starts again from
    the store; a finished one is returned as it is. Fails, changing nothing, when the dump is
    not in the store, when `dbname` exists and is not this migration's, or when the target
    lacks a role the dump names.
    """
    started = time.monotonic()
    report = progress or (lambda done, total: None)
    manifest = await read_manifest(store, key_prefix)
    if manifest is None:
        raise MigrationStepError(
            f"the dump is not in the store: no {_manifest_key(key_prefix)} (dump first)"
        )
    mark = await asyncio.to_thread(_database_mark, target, dbname)
    if mark == _mark(key_prefix, "restored"):
        taken = await asyncio.to_thread(fingerprint, target, dbname)
        return RestoreOutcome(0, time.monotonic() - started, (), taken, reused=True)
    if mark is not None and mark != _mark(key_prefix, "restoring"):
        raise MigrationStepError(
            f"the target has a database {dbname!r} that is not this migration's (its comment is "
            f"{mark!r}, not {_mark(key_prefix, 'restoring')!r}); refusing to drop it"
        )
    missing = await asyncio.to_thread(_missing_roles, target, manifest.roles)
    if missing:
        raise MigrationStepError(
            f"the target lacks roles the dump names: {', '.join(missing)}; copy the source's "
            "roles first (the prepare step)"
        )
    total, downloaded = manifest.bytes, 0

    def done(size: int) -> None:
        nonlocal downloaded
        downloaded += size
        report(downloaded, total)

    with _spool_dir(spool, target, "restore") as work:
        directory = work / "dump"
        directory.mkdir()
        chown_to(directory, target.user)
        report(0, total)
        await _gather_limited(
            jobs,
            (_download(store, item, directory, target, done) for item in manifest.files),
        )
        await asyncio.to_thread(_create_marked, target, dbname, manifest)
        benign = await asyncio.to_thread(_pg_restore, target, dbname, jobs, directory)
    await asyncio.to_thread(
        target.rows,
        "COMMENT ON DATABASE :\"db\" IS :'mark'",
        {"db": dbname, "mark": _mark(key_prefix, "restored")},
    )
    taken = await asyncio.to_thread(fingerprint, target, dbname)
    return RestoreOutcome(total, time.monotonic() - started, tuple(benign), taken)


__all__ = [
    "KNOWN_BENIGN",
    "DumpFile",
    "DumpManifest",
    "RestoreError",
    "RestoreOutcome",
    "dump_to_store",
    "parse_restore_errors",
    "read_manifest",
    "restore_from_store",
]

"""Running things as the database's OS user.

Whatever PostgreSQL executes (``archive_command``, ``restore_command``) runs as the OS user that
owns the cluster, usually ``postgres``, with that user's permissions. A program under ``/root``,
or one whose interpreter is a virtualenv symlinked into ``/root/.pyenv``, fails there with a bare
"Permission denied" in the server log, one segment at a time. This module is the one place that
knows how to:

- name that user (:func:`database_os_user`) and run a command as it (:func:`run_as`);
- check a directory is reachable by it (:func:`check_traversable`);
- find a Python interpreter it can execute (:func:`system_python`);
- install a standard-library-only script where it can execute it (:func:`install_user_tool`);
- find the PostgreSQL server binaries (:func:`pg_bindir`).

Only the standard library is used, and nothing here imports the rest of Tidemark.
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DB_OS_USER",
    "SYSTEM_PATH",
    "OsCommandError",
    "OsUser",
    "check_stdlib_only",
    "check_traversable",
    "chown_to",
    "database_os_user",
    "install_user_tool",
    "pg_bindir",
    "run_as",
    "switch_user_kwargs",
    "system_python",
    "user_env",
]

DEFAULT_DB_OS_USER = "postgres"
"""The OS user that owns PostgreSQL clusters when Tidemark runs as root."""

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH given to commands run as the database user: system directories only, never a venv."""

PYTHON_CANDIDATES: tuple[str, ...] = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
"""Interpreters tried by :func:`system_python`, in order, before a PATH search of SYSTEM_PATH."""

MIN_TOOL_PYTHON: tuple[int, int] = (3, 9)
"""Oldest interpreter a tool run by the database user may be given."""

PG_BINARIES: tuple[str, ...] = ("initdb", "pg_ctl", "postgres", "psql")
"""Binaries :func:`pg_bindir` requires to call a directory a PostgreSQL server bindir."""

_R, _W, _X = 4, 2, 1


class OsCommandError(RuntimeError):
    """An OS-level precondition failed: missing user, unreachable path, no usable interpreter."""


@dataclass(frozen=True)
class OsUser:
    """An OS account: enough to switch to it in a subprocess and to reason about permissions."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def from_pwd(cls, entry: pwd.struct_passwd) -> OsUser:
        """Build from a password database entry, with its full supplementary group list."""
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    @classmethod
    def by_name(cls, name: str) -> OsUser:
        """Look a user up by name; :class:`OsCommandError` if there is no such user."""
        try:
            return cls.from_pwd(pwd.getpwnam(name))
        except KeyError:
            raise OsCommandError(f"OS user {name!r} does not exist on this machine") from None

    @classmethod
    def current(cls) -> OsUser:
        """The user this process runs as (effective uid)."""
        return cls.from_pwd(pwd.getpwuid(os.geteuid()))

    @property
    def is_current(self) -> bool:
        """True when this is the user the process already runs as (no switch needed)."""
        return self.uid == os.geteuid()

    def may(self, path: str | os.PathLike[str], bits: int) -> bool:
        """Whether this user has ``bits`` (4=read, 2=write, 1=execute/search) on ``path``.

        Classic mode bits only (owner, group, other); POSIX ACLs are not consulted. Root may read
        and write anything and execute anything with at least one execute bit.
        """
        st = os.stat(path)
        mode = st.st_mode
        if self.uid == 0:
            if bits & _X and not stat.S_ISDIR(mode):
                return bool(mode & 0o111)
            return True
        if st.st_uid == self.uid:
            granted = (mode >> 6) & 7
        elif st.st_gid in self.groups or st.st_gid == self.gid:
            granted = (mode >> 3) & 7
        else:
            granted = mode & 7
        return granted & bits == bits


def database_os_user(name: str = DEFAULT_DB_OS_USER) -> OsUser:
    """The OS user database processes run as.

    PostgreSQL refuses to run as root, so as root this is ``name`` (which must exist); as any
    other user it is the current user, who can run PostgreSQL itself.
    """
    if os.geteuid() == 0:
        return OsUser.by_name(name)
    return OsUser.current()


def user_env(user: OsUser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for ``user``: system PATH, C locale, the user's HOME, and ``extra``.

    Nothing is inherited from this process: no venv on PATH, no PYTHON* variables, no PG*
    variables pointing libpq at some other server.
    """
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C",
        "LC_ALL": "C",
    }
    if extra:
        env.update(extra)
    return env


def run_as(
    user: OsUser,
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` and capture its output as text; never raises on exit status.

    When this process is root and ``user`` is someone else, the child gets that user's uid, gid
    and exactly its supplementary groups (root's groups are dropped, so a permission problem shows
    here and not only in production). ``env`` defaults to :func:`user_env`; ``cwd`` should be a
    directory the user can enter (a root-only cwd makes some tools warn or fail).
    """
    return subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=dict(env) if env is not None else user_env(user),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **switch_user_kwargs(user),
    )


def switch_user_kwargs(user: OsUser) -> dict[str, Any]:
    """The ``user``/``group``/``extra_groups`` arguments that make a ``subprocess.Popen`` (or
    ``asyncio.create_subprocess_exec``) child run as ``user``, exactly as :func:`run_as` does.

    Empty unless this process is root and ``user`` is someone else; otherwise the child gets that
    user's uid, gid and exactly its supplementary groups (root's are dropped).
    """
    if os.geteuid() != 0 or user.is_current:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}


def chown_to(path: str | os.PathLike[str], user: OsUser) -> None:
    """Give ``path`` to ``user`` (and its primary group) when we are root; a no-op otherwise."""
    if os.geteuid() == 0 and not user.is_current:
        os.chown(path, user.uid, user.gid)


def check_traversable(path: str | os.PathLike[str], user: OsUser) -> None:
    """Raise :class:`OsCommandError` unless ``user`` can search every directory down to ``path``.

    ``path`` itself is included when it is a directory. The message names the first directory in
    the way, its owner and mode.
    """
    target = Path(path).resolve()
    chain = [*reversed(target.parents), target] if target.is_dir() else [*reversed(target.parents)]
    for directory in chain:
        if not user.may(directory, _X):
            st = directory.stat()
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            raise OsCommandError(
                f"OS user {user.name!r} cannot traverse {directory} "
                f"(owner {owner}, mode {stat.filemode(st.st_mode)}), so it cannot reach {target}"
            )


_PY_CHECK = f"import sys; sys.exit(0 if sys.version_info >= {MIN_TOOL_PYTHON!r} else 3)"


def _python_candidates() -> list[str]:
    found: list[str] = []
    for candidate in PYTHON_CANDIDATES:
        if candidate not in found and os.path.exists(candidate):
            found.append(candidate)
    on_path = shutil.which("python3", path=SYSTEM_PATH)
    if on_path and on_path not in found:
        found.append(on_path)
    return found


@functools.cache
def _system_python_for(user: OsUser) -> Path:
    tried: list[str] = []
    for candidate in _python_candidates():
        if any(c.isspace() for c in candidate):
            tried.append(f"{candidate}: whitespace in path (unusable in a shebang)")
            continue
        try:
            done = run_as(user, [candidate, "-I", "-c", _PY_CHECK], cwd="/", timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        if done.returncode == 0:
            return Path(candidate)
        why = done.stderr.strip() or f"exit {done.returncode}"
        if done.returncode == 3:
            why = "too old"
        tried.append(f"{candidate}: {why}")
    detail = "; ".join(tried) if tried else f"no python3 in {PYTHON_CANDIDATES} or on {SYSTEM_PATH}"
    raise OsCommandError(
        f"no Python >= {MIN_TOOL_PYTHON[0]}.{MIN_TOOL_PYTHON[1]} that OS user {user.name!r} can "
        f"execute ({detail}); install the distribution's python3 package"
    )


def system_python(user: OsUser | None = None) -> Path:
    """An interpreter ``user`` (default: :func:`database_os_user`) can execute, as an absolute path.

    Candidates are system interpreters only (``/usr/bin/python3`` first), never this process's
    virtualenv. Each is verified by actually running it as ``user``; the answer is cached.
    """
    return _system_python_for(user if user is not None else database_os_user())


def _imported_top_level(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise OsCommandError("relative import in a tool meant to run standalone")
            if node.module:
                names.add(node.module.partition(".")[0])
    return names


def check_stdlib_only(source: str, filename: str = "<tool>") -> set[str]:
    """Parse ``source`` and return its top-level imports; raise if any is not standard library.

    Only ``import`` statements are seen (not ``__import__`` or importlib calls).
    """
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise OsCommandError(f"{filename}: not valid Python: {exc}") from exc
    try:
        names = _imported_top_level(tree)
    except OsCommandError as exc:
        raise OsCommandError(f"{filename}: {exc}") from None
    foreign = sorted(n for n in names if n not in sys.stdlib_module_names and n != "__future__")
    if foreign:
        raise OsCommandError(
            f"{filename}: tools run by the database user may import the standard library only; "
            f"found {', '.join(foreign)}"
        )
    return names


_VERIFY_TOOL = """\
import importlib.util, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as handle:
    compile(handle.read(), path, "exec")
missing = [name for name in sys.argv[2:] if importlib.util.find_spec(name) is None]
if missing:
    sys.exit("modules missing from this interpreter: " + ", ".join(missing))
"""

_TOOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def install_user_tool(
    source_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    user: OsUser | None = None,
    interpreter: str | os.PathLike[str] | None = None,
) -> Path:
    """Install a standard-library-only Python script where the database user can execute it.

    The script is copied to ``dest_dir/name`` (``name`` defaults to the source file name without
    ``.py``), mode 0755, owned by the caller (so the database user can run it but not change it),
    with its shebang replaced by ``#!<interpreter> -IS``. ``interpreter`` defaults to
    :func:`system_python`; ``-I`` (isolated mode) keeps PYTHON* variables and user site-packages
    out of it, and ``-S`` skips ``site`` (and the distribution's ``sitecustomize``), which a
    standard-library script does not need and which is most of the interpreter's start-up: such
    a tool runs once per WAL file, with PostgreSQL waiting. ``dest_dir`` is created (0755) if
    missing, and the installed file is replaced atomically, so a server running the previous
    copy never sees a half-written one.

    Before returning, the installed file is compiled and its imports resolved by ``interpreter``
    running as ``user``: a script that only works under our virtualenv fails here, not in the
    server log. Returns the installed path.
    """
    source = Path(source_path)
    who = user if user is not None else database_os_user()
    python = Path(interpreter) if interpreter is not None else system_python(who)
    if not python.is_absolute() or any(c.isspace() for c in str(python)):
        raise OsCommandError(f"interpreter {python} must be an absolute path without whitespace")
    tool_name = name if name is not None else source.name.removesuffix(".py")
    if not _TOOL_NAME.match(tool_name):
        raise OsCommandError(f"tool name {tool_name!r} is not a plain file name")

    text = source.read_text(encoding="utf-8")
    imports = check_stdlib_only(text, str(source))
    if text.startswith("#!"):
        text = text.partition("\n")[2]
    body = f"#!{python} -IS\n{text}"  # one shebang argument: the flags combined

    directory = Path(dest_dir)
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o755)
        directory.chmod(0o755)  # mkdir's mode is filtered by the umask
    check_traversable(directory, who)

    target = directory / tool_name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{tool_name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o755)  # noqa: S103 - the database user must execute it; not write it
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise

    done = run_as(
        who, [python, "-I", "-S", "-c", _VERIFY_TOOL, target, *sorted(imports)], cwd="/", timeout=60
    )
    if done.returncode != 0:
        raise OsCommandError(
            f"{target} is not usable by OS user {who.name!r} with {python}: "
            f"{(done.stderr or done.stdout).strip() or f'exit {done.returncode}'}"
        )
    return target


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _is_server_bindir(path: Path, required: Iterable[str]) -> bool:
    return all(os.access(path / b, os.X_OK) for b in required)


def pg_bindir(required: Sequence[str] = PG_BINARIES) -> Path:
    """The PostgreSQL server binary directory.

    Tries ``pg_config --bindir`` first, then ``/usr/lib/postgresql/*/bin`` newest version first.
    A directory counts only if it holds every binary in ``required`` (``pg_config`` from a client
    package may point at a bindir without ``initdb``). Raises :class:`OsCommandError` naming what
    was tried.
    """
    tried: list[str] = []
    pg_config = shutil.which("pg_config") or shutil.which("pg_config", path=SYSTEM_PATH)
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{pg_config} --bindir: {exc}")
        else:
            if out and _is_server_bindir(Path(out), required):
                return Path(out)
            tried.append(f"{out or '(empty)'} (from pg_config)")
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _is_server_bindir(Path(candidate), required):
            return Path(candidate)
        tried.append(candidate)
    raise OsCommandError(
        f"PostgreSQL server binaries ({', '.join(required)}) not found; tried "
        f"{', '.join(tried) or 'pg_config (not on PATH) and /usr/lib/postgresql/*/bin (none)'}. "
        "Install the postgresql server package (e.g. postgresql-15)."
    )

"""`schemas/` is the contract every service depends on, so it must depend on no service.

An import the other way would make the wire format change when a service's internals change,
and would drag service dependencies into every tool that only wants to read a message.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import schemas

pytestmark = pytest.mark.unit

SCHEMAS = Path(schemas.__file__).parent
FORBIDDEN = "services"


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every absolute module an AST imports, with its line; `__import__("x")` included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def is_forbidden(module: str) -> bool:
    return module == FORBIDDEN or module.startswith(f"{FORBIDDEN}.")


def test_schemas_import_nothing_from_services() -> None:
    files = sorted(SCHEMAS.rglob("*.py"))
    assert files, f"no modules found under {SCHEMAS}"
    offenders = [
        f"{path.relative_to(SCHEMAS.parent)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if is_forbidden(module)
    ]
    assert not offenders, "schemas/ must not import services/: " + "; ".join(offenders)


def test_the_scan_sees_every_import_form() -> None:
    source = (
        "import services\n"
        "import services.bus as bus\n"
        "from services.catalog import index\n"
        "import importlib\n"
        "importlib.import_module('services.executor')\n"
        "__import__('services.archiver')\n"
        "from . import positions\n"
        "import servicesx\n"
    )
    found = {module for _, module in imported_modules(ast.parse(source)) if is_forbidden(module)}
    assert found == {
        "services",
        "services.bus",
        "services.catalog",
        "services.executor",
        "services.archiver",
    }


# -- the floors ----------------------------------------------------------------------------------
#
#   schemas/  →  shared runtime (bus, blobstore, telemetry, runtime)  →  engines  →  services
#   (planner, executor, archiver, catalog)  →  the settings file, stack, CLI and demo on top.
#
# Each floor imports only from floors below it, and a service reaches another service only
# through that service's `client` module. A violation makes a lower floor change when a higher
# one does, which is how a wire format or an engine ends up depending on a service's internals.

SERVICES_DIR = SCHEMAS.parent / "services"
RUNTIME = frozenset({"bus", "blobstore", "telemetry", "runtime"})
ENGINES = frozenset({"engines"})
SERVICES = frozenset({"planner", "executor", "archiver", "catalog"})
TOP = frozenset({"settings", "stack", "cli", "demo"})
"""The settings file composes every service's section, so it sits above them, beside the CLI."""

FLOOR = {**dict.fromkeys(RUNTIME, 1), "engines": 2, **dict.fromkeys(SERVICES, 3)}
FLOOR.update(dict.fromkeys(TOP, 4))

KNOWN: dict[str, str] = {
    # Each entry is a violation that exists today, with why; the list only shrinks.
    "services/runtime/service.py -> services.settings": (
        "the service base loads the whole settings file, which composes every service's section"
    ),
}


def floor_of(module: str) -> tuple[int, str] | None:
    """The floor of a `services.*` module, and its package; None outside the floors."""
    parts = module.split(".")
    if parts[0] != "services" or len(parts) < 2 or parts[1] not in FLOOR:
        return None
    return FLOOR[parts[1]], parts[1]


def violations(path: str, source: str) -> list[str]:
    """Every import in `source` (the module at `path`, relative to the repository) that breaks
    the floors."""
    parts = path.removesuffix(".py").split("/")
    here = floor_of(".".join(parts))
    if here is None:
        return []
    floor, package = here
    found = []
    for _, module in imported_modules(ast.parse(source)):
        if module == "schemas" or module.startswith("schemas."):
            continue
        there = floor_of(module)
        if there is None or there[1] == package:
            continue
        other_floor = there[0]
        upward = other_floor > floor
        sideways = floor == 3 and other_floor == 3 and module.split(".")[2:3] != ["client"]
        if upward or sideways:
            found.append(f"{path} -> {module}")
    return found


def tree_violations() -> list[str]:
    root = SERVICES_DIR.parent
    return sorted(
        v
        for path in SERVICES_DIR.rglob("*.py")
        for v in violations(str(path.relative_to(root)), path.read_text(encoding="utf-8"))
    )


def test_every_floor_imports_only_from_the_floors_below_it() -> None:
    new = [v for v in tree_violations() if v not in KNOWN]
    assert not new, "imports that break the floors (docs/architecture.md): " + "; ".join(new)


def test_the_list_of_known_violations_only_shrinks() -> None:
    gone = sorted(set(KNOWN) - set(tree_violations()))
    assert not gone, "fixed — delete them from KNOWN: " + "; ".join(gone)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        # An engine importing a service's internals: refused.
        ("services/engines/postgres/x.py", "from services.executor.jobs import run\n", 1),
        # The runtime floor importing an engine or a service: refused.
        ("services/bus/x.py", "import services.engines.registry\n", 1),
        ("services/blobstore/x.py", "from services.catalog import index\n", 1),
        # A service reaching into another service past its client: refused; the client: fine.
        ("services/planner/x.py", "from services.catalog.index import Index\n", 1),
        ("services/planner/x.py", "from services.catalog.client import CatalogClient\n", 0),
        # Downward and within a package: fine.
        ("services/executor/x.py", "from services.engines.base import Engine\n", 0),
        ("services/engines/x.py", "from services.bus import Publisher\nimport schemas\n", 0),
        ("services/cli/x.py", "from services.planner.restores import Restores\n", 0),
    ],
)
def test_the_floor_rule_catches_a_violation(path: str, source: str, expected: int) -> None:
    assert len(violations(path, source)) == expected

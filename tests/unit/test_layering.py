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

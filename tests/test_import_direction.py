"""Imports follow the data: Label Studio -> integrations -> workers -> integrations -> Label Studio, with the
orchestrator on top recording, scheduling and serving. Read from the source with ast, so a lazy import inside a
function counts as much as one at the top of a module."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_LIBRARIES = {"ray", "sqlalchemy", "alembic", "psycopg", "fastapi", "starlette", "requests", "boto3",
                     "botocore", "label_studio_sdk", "prometheus_client"}


def imported_modules(source: str, package: tuple[str, ...]) -> set[str]:
    """Every module that a module of `package` imports, relative imports resolved against the package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            if node.module is None:  # from . import x: x may be a module
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(folder: str, allowed) -> dict[str, list[str]]:
    found = {}
    for path in sources(folder):
        package = path.relative_to(ROOT).with_suffix("").parts[:-1]
        bad = sorted(m for m in imported_modules(path.read_text(), package) if not allowed(m))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_model_imports_nothing_of_the_service():
    assert offending("workers/model", lambda m: top(m) not in {"orchestrator", "integrations"} | SERVICE_LIBRARIES
                     and not (top(m) == "workers" and not m.startswith("workers.model"))) == {}


def test_integrations_import_neither_the_orchestrator_nor_the_workers_beyond_the_model():
    assert offending("integrations", lambda m: top(m) != "orchestrator"
                     and (top(m) != "workers" or m.startswith("workers.model"))) == {}


def test_workers_do_not_import_the_orchestrator():
    assert offending("workers", lambda m: top(m) != "orchestrator") == {}


@pytest.mark.parametrize("source, expected", [
    ("from orchestrator.db import Project", "orchestrator.db"),
    ("from ..db import Project", "orchestrator.db"),
    ("from . import masks", "orchestrator.sub.masks"),
    ("def f():\n    import ray", "ray"),
])
def test_the_check_sees_every_kind_of_import(source, expected):
    assert expected in imported_modules(source, ("orchestrator", "sub"))

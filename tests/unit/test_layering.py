"""The repository's layering, checked on the source: the library (app/) stands alone, the
entry points and deployment code build on it, benchmarks stand apart from the tests, and no
module grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
# Folders of project code (tests are held to the import rules below, not to the size limit).
CODE_FOLDERS = ("app", "jobs", "serve", "cluster", "benchmarks")
# What each folder's modules must never import (top-level package names).
FORBIDDEN_IMPORTS = {
    "app": {"jobs", "serve", "cluster", "benchmarks", "tests"},
    "benchmarks": {"tests"},
    "jobs": {"serve", "cluster", "benchmarks", "tests"},
    "serve": {"jobs", "cluster", "benchmarks", "tests"},
}


def python_files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a module, lazy ones inside functions included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_IMPORTS))
def test_no_module_imports_a_layer_above_it(folder: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN_IMPORTS[folder])
        for path in python_files(folder)
    }
    assert python_files(folder), f"{folder}/ has no modules: the check would pass vacuously"
    assert {path: found for path, found in offenders.items() if found} == {}


def test_no_code_module_is_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text().splitlines())
        for folder in CODE_FOLDERS
        for path in python_files(folder)
    }
    assert len(sizes) > 30
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_module_shadows_a_package_of_the_project() -> None:
    """A module named like a top-level package (serve/app.py next to app/) hides that package
    from every script run out of its folder."""
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    packages |= {folder for folder in CODE_FOLDERS if (REPO / folder).is_dir()}
    shadows = [
        str(path.relative_to(REPO))
        for folder in (*CODE_FOLDERS, "tests")
        for path in python_files(folder)
        if path.stem in packages
    ]
    assert shadows == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text("def f():\n    from serve.service import app\n    import tests.support\n")
    assert imported_packages(module) >= {"serve", "tests"}

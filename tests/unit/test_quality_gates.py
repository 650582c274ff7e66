"""The quality gates catch what they are there to catch.

- ruff, mypy and bandit, run with the project's pyproject.toml, fail on deliberately bad code
  (and the configuration is the one in force: rules and limits the tools' defaults lack);
- `make lint` runs all four checks; `.ci/run` runs `make lint` before `make test` and stops
  at the first failure;
- the GitHub workflows and the pre-commit configuration parse, every `make` target they call
  exists, and the actions they use are pinned to a major version.

Each tool checks one small file in tmp_path with the configuration passed explicitly: a few
seconds in all, no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent
BASH = shutil.which("bash") or "/bin/bash"
MAKE = shutil.which("make") or "make"


def tool(name: str) -> str:
    """A dev tool from the running venv (requirements-dev.lock pins it), else from PATH."""
    found = BIN / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    assert on_path, f"{name} is missing: `make venv` installs it from requirements-dev.lock"
    return on_path


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# ruff (lint and format) with the project's configuration

BAD_LINT = '''\
"""Deliberately bad: each line below trips one rule of the project's selection."""

import os


def evaluate(expression: str) -> object:
    try:
        return eval(expression)
    except:
        return None


MESSAGE = "{}"
'''.format("x" * (101 - len('MESSAGE = ""')))  # one character over the project's 100

CLEAN = '''\
"""A clean module: passes ruff check and ruff format --check as the project configures them."""

from __future__ import annotations

import json

# 99 characters: over ruff's default line length (88), within the project's (100).
MESSAGE = "{}"


def dump(values: dict[str, int]) -> str:
    return json.dumps(values, sort_keys=True)
'''.format("y" * (99 - len('MESSAGE = ""')))

BADLY_FORMATTED = "def f( a,b ):\n    return {'a':a,'b':b}\n"


def ruff(*args: str) -> Any:
    return run(tool("ruff"), *args, "--no-cache", "--config", str(PYPROJECT))


def test_ruff_fails_on_a_bad_file_with_the_projects_rules(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad_lint.py", BAD_LINT)
    result = ruff("check", "--output-format", "json", str(bad))
    assert result.returncode == 1, result.stdout + result.stderr
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    # F401 unused import, E722 bare except; S307 (eval) and E501 at 100 columns exist only
    # through the project's `select` and `line-length`: ruff's defaults have neither.
    assert {"F401", "E722", "S307", "E501"} <= codes, codes


def test_ruff_passes_a_clean_file(tmp_path: Path) -> None:
    clean = write(tmp_path / "clean.py", CLEAN)
    assert max(len(line) for line in CLEAN.splitlines()) == 99
    checked = ruff("check", str(clean))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = ruff("format", "--check", str(clean))
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_ruff_format_check_fails_on_unformatted_code(tmp_path: Path) -> None:
    messy = write(tmp_path / "messy.py", BADLY_FORMATTED)
    result = ruff("format", "--check", str(messy))
    assert result.returncode == 1, result.stdout + result.stderr
    assert messy.read_text() == BADLY_FORMATTED  # --check never rewrites


# ---------------------------------------------------------------------------------------------
# mypy with the project's configuration (an explicit file overrides its `files`)

BAD_TYPES = """\
def double(x: int) -> int:
    return x * 2


label: str = double(2)


def untyped():
    count: int = "three"
    return count
"""

GOOD_TYPES = """\
def double(x: int) -> int:
    return x * 2


total: int = double(2)
"""


def mypy(path: Path, cache: Path) -> Any:
    return run(
        tool("mypy"),
        "--config-file",
        str(PYPROJECT),
        "--no-incremental",
        "--cache-dir",
        str(cache),
        str(path),
    )


def test_mypy_fails_on_a_type_error_and_checks_untyped_defs(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad_types.py", BAD_TYPES)
    result = mypy(bad, tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad_types.py:5: error: Incompatible types in assignment" in result.stdout
    # Line 9 sits in an unannotated function: only `check_untyped_defs = true` reports it.
    assert "bad_types.py:9: error: Incompatible types in assignment" in result.stdout
    assert "Found 2 errors in 1 file (checked 1 source file)" in result.stdout


def test_mypy_passes_a_well_typed_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good_types.py", GOOD_TYPES)
    result = mypy(good, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found in 1 source file" in result.stdout  # this file, not `files`


# ---------------------------------------------------------------------------------------------
# bandit as `make lint` runs it (-ll: medium and high severity)

INSECURE = """\
import subprocess

import yaml


def run(cmd: str) -> int:
    return subprocess.call(cmd, shell=True)


def parse(text: str) -> object:
    return yaml.load(text)
"""


def test_bandit_flags_high_severity_findings(tmp_path: Path) -> None:
    insecure = write(tmp_path / "insecure.py", INSECURE)
    # bandit skips any path that holds one of its exclude_dirs, even a file named on the line.
    excluded = tomllib.loads(PYPROJECT.read_text())["tool"]["bandit"]["exclude_dirs"]
    if any(part in str(insecure) for part in excluded):
        pytest.skip(f"bandit would skip {insecure}: its path holds one of {excluded}")
    result = run(tool("bandit"), "-c", str(PYPROJECT), "-ll", "-f", "json", "-q", str(insecure))
    assert result.returncode == 1, result.stdout + result.stderr
    findings = {(r["test_id"], r["issue_severity"]) for r in json.loads(result.stdout)["results"]}
    assert ("B602", "HIGH") in findings, findings  # subprocess with shell=True
    assert ("B506", "MEDIUM") in findings, findings  # yaml.load without a safe Loader


# ---------------------------------------------------------------------------------------------
# make lint and .ci/run


def test_make_lint_runs_every_check() -> None:
    result = run(MAKE, "-n", "lint")
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    for check in ("ruff check .", "ruff format --check .", "/mypy", "bandit"):
        assert check in commands, f"`make lint` no longer runs {check!r}:\n{commands}"


def _ci_script() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_ci_script_is_strict_and_lints_before_testing() -> None:
    lines = _ci_script()
    make_lines = [i for i, line in enumerate(lines) if re.match(r"make\s", line)]
    targets = [lines[i].split()[1] for i in make_lines]
    assert targets.index("lint") < targets.index("test"), targets
    strict = next(
        i for i, line in enumerate(lines) if re.match(r"set\s+-\w*e|set\s+-o\s+errexit", line)
    )
    assert strict < make_lines[0], "`set -e` must come before the first make"
    for i in make_lines:  # nothing may swallow a failure
        assert "||" not in lines[i] and not lines[i].endswith("&"), lines[i]


@pytest.mark.parametrize(
    ("failing", "expected_calls", "succeeds"),
    [
        (None, ["lint", "test"], True),
        ("lint", ["lint"], False),  # a lint finding stops CI before the tests
        ("test", ["lint", "test"], False),
    ],
)
def test_ci_script_stops_at_the_first_failing_gate(
    tmp_path: Path, failing: str | None, expected_calls: list[str], succeeds: bool
) -> None:
    """.ci/run against a stub `make` that records its targets and fails the chosen one."""
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", checkout / ".ci" / "run")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub = write(
        stubs / "make",
        '#!/usr/bin/env bash\necho "$*" >> "$MAKE_LOG"\n[ "$1" != "${FAIL_TARGET:-}" ]\n',
    )
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "make.log"
    env = {
        **os.environ,
        "PATH": f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKE_LOG": str(log),
        "FAIL_TARGET": failing or "",
    }
    result = run(BASH, str(checkout / ".ci" / "run"), cwd=tmp_path, env=env)
    assert (result.returncode == 0) is succeeds, result.stdout + result.stderr
    assert log.read_text().split() == expected_calls


# ---------------------------------------------------------------------------------------------
# GitHub workflows and pre-commit


def load_workflow(name: str) -> dict[Any, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(loaded, dict), name
    return loaded


def triggers(workflow: dict[Any, Any]) -> Any:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


WORKFLOW_FILES = ["test.yml", "docker.yml", "release.yml"]


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_parses_and_its_reusable_workflows_exist(name: str) -> None:
    """(Actions pinned by commit SHA: tests/unit/test_workflow_pins.py.)"""
    workflow = load_workflow(name)
    assert triggers(workflow) and workflow["jobs"], name
    for job in workflow["jobs"].values():
        uses = job.get("uses")
        if uses:  # a reusable workflow of this repository
            assert uses.startswith("./.github/workflows/"), uses
            assert (REPO / uses).is_file(), uses


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_make_target_a_workflow_calls_exists(name: str) -> None:
    scripts = " ".join(str(step.get("run", "")) for step in steps(load_workflow(name)))
    for target in re.findall(r"\bmake\s+([A-Za-z][\w-]*)", scripts):
        result = run(MAKE, "-n", target)
        assert result.returncode == 0, f"{name} calls `make {target}`: {result.stderr}"


def test_test_workflow_runs_the_gates_with_postgres() -> None:
    workflow = load_workflow("test.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(triggers(workflow))
    runs = [str(step.get("run", "")).strip() for step in steps(workflow)]
    assert runs.index("make lint") < runs.index("make test"), runs
    job = workflow["jobs"]["test"]
    postgres = job["services"]["postgres"]
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "5432:5432" in postgres["ports"]
    # The variable the MLflow-server tests read, pointed at that service.
    conftest = (REPO / "tests" / "integration" / "mlflow_server" / "conftest.py").read_text()
    assert "MLFLOW_TEST_POSTGRES_URI" in conftest
    assert "@127.0.0.1:5432/" in job["env"]["MLFLOW_TEST_POSTGRES_URI"]
    uploads = [s for s in steps(workflow) if s.get("uses", "").startswith("actions/upload-art")]
    assert uploads and uploads[0]["with"]["path"] == "coverage.xml"


def test_release_workflow_tests_before_publishing() -> None:
    workflow = load_workflow("release.yml")
    assert triggers(workflow) == {"push": {"tags": ["v*.*.*"]}}
    jobs = workflow["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/test.yml"
    assert jobs["release"]["needs"] == "test"
    checkout = next(
        s for s in jobs["release"]["steps"] if s.get("uses", "").startswith("actions/c")
    )
    assert checkout["with"]["fetch-depth"] == 0  # the changelog needs every tag


def test_docker_workflow_builds_the_cluster_image_from_the_repository_root() -> None:
    workflow = load_workflow("docker.yml")
    assert "workflow_dispatch" in triggers(workflow)
    build = next(s for s in steps(workflow) if s.get("uses", "").startswith("docker/build-push"))
    dockerfile = REPO / build["with"]["file"]
    assert dockerfile == REPO / "cluster" / "docker" / "Dockerfile"
    assert build["with"]["context"] == "."
    assert "${{ github.sha }}" in build["with"]["tags"]
    for line in dockerfile.read_text().splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if words and words[0] == "COPY":  # every source exists in the context
            for source in words[1:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"


def test_pre_commit_config_has_every_hook() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert {
        "ruff",
        "ruff-format",
        "mypy",
        "bandit",
        "check-yaml",
        "end-of-file-fixer",
        "trailing-whitespace",
        "shellcheck",
        "check-added-large-files",
    } <= set(hooks)
    assert hooks["mypy"]["entry"] == ".venv/bin/mypy"
    assert hooks["bandit"]["entry"].startswith(".venv/bin/bandit -q -c pyproject.toml -ll")
    assert "--allow-multiple-documents" in hooks["check-yaml"]["args"]
    skip_templates = re.compile(hooks["check-yaml"]["exclude"])
    assert skip_templates.search("cluster/charts/mlflow/templates/deployment.yaml")
    assert not skip_templates.search("cluster/charts/mlflow/values.yaml")

"""The Ray image (cluster/docker/Dockerfile: the base lock on Ray's image) without Docker: its
Python environment built from its own install line, its WORKDIR holding only what it copies,
its ENV. What every Ray pod runs must start there: the modules of app/, jobs/ and serve/ import
(a dependency left out of requirements.lock fails here), the entrypoints of the generated
RayJobs parse their arguments, and the RayService's import path names an application."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.cluster.clusterlib import KUBERAY, REPO, render_manifest
from tests.image_env import ImageEnv, build

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
for package in ("app", "jobs", "serve"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, f"{package}."):
        importlib.import_module(info.name)
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageEnv:
    return build(REPO / "cluster" / "docker" / "Dockerfile", tmp_path_factory.mktemp("ray-image"))


def _python(image: ImageEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [image.bin("python"), *args],
        cwd=image.workdir,
        env=image.env({}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_every_module_of_the_image_imports_in_its_environment(image: ImageEnv) -> None:
    run = _python(image, "-c", IMPORT_EVERYTHING)
    assert run.returncode == 0, run.stderr[-3000:]


def _entrypoint_scripts() -> set[str]:
    """The Python scripts the RayJobs run: `python jobs/X.py`, directly or from a shell script
    of the image (evaluate-promote.sh)."""
    scripts: set[str] = set()
    for path in sorted(KUBERAY.glob("rayjob-*.yaml")):
        (job,) = render_manifest(path)
        command = job["spec"]["entrypoint"].split()
        if command[0] == "python":
            scripts.add(command[1])
        else:
            assert command[0] == "bash", command
            scripts |= set(re.findall(r"^python (\S+\.py)", (REPO / command[1]).read_text(), re.M))
    return scripts


def test_the_job_entrypoints_start_in_the_image(image: ImageEnv) -> None:
    scripts = _entrypoint_scripts()
    assert {"jobs/train.py", "jobs/tune.py", "jobs/evaluate.py", "jobs/promote.py"} <= scripts
    for script in sorted(scripts):
        assert (image.workdir / script).is_file(), f"{script} is not copied into the image"
        run = _python(image, script, "--help")
        assert run.returncode == 0 and "usage:" in run.stdout, f"{script}: {run.stderr[-2000:]}"


def test_the_rayservice_import_path_names_an_application_in_the_image(image: ImageEnv) -> None:
    (service,) = render_manifest(KUBERAY / "rayservice.yaml")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    for application in config["applications"]:
        module, _, attribute = application["import_path"].partition(":")
        check = (
            "import importlib, ray.serve;"
            f"app = getattr(importlib.import_module({module!r}), {attribute!r});"
            "assert isinstance(app, ray.serve.Application), type(app)"
        )
        run = _python(image, "-c", check)
        assert run.returncode == 0, f"{application['import_path']}: {run.stderr[-2000:]}"

"""The deployment guides name only files and make targets that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.clusterlib import REPO

DOCS = [REPO / "docs" / "deploy-aws.md", REPO / "docs" / "migrate-local-to-cluster.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_in_the_guide_exists(doc: Path) -> None:
    text = doc.read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:cluster|docs|serve|jobs)/[\w./*-]*\w)", text))
    assert paths
    # A file the guide has you create from its .example counts as present.
    missing = [
        p for p in sorted(paths) if not list(REPO.glob(p)) and not (REPO / f"{p}.example").is_file()
    ]
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_make_target_in_the_guide_exists(doc: Path) -> None:
    root = (REPO / "Makefile").read_text()
    included = re.findall(r"^include (\S+)$", root, re.MULTILINE)
    makefiles = [REPO / "Makefile", *(REPO / path for path in included)]
    targets = {
        target
        for makefile in makefiles
        for target in re.findall(r"^([\w-]+):", makefile.read_text(), re.MULTILINE)
    }
    used = set(re.findall(r"`make ([\w-]+)`", doc.read_text()))
    assert used <= targets

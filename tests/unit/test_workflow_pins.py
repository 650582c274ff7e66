"""Every remote action a workflow uses is pinned to a full commit SHA, with its tag as a comment."""

import re
from pathlib import Path

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")
TAG_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\S*")


def uses_of(workflow: dict) -> list[str]:
    """The `uses:` of every job (reusable workflows) and of every step."""
    found = []
    for job in (workflow.get("jobs") or {}).values():
        found += [job["uses"]] if "uses" in job else []
        found += [step["uses"] for step in job.get("steps") or [] if "uses" in step]
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_remote_actions_pinned_by_sha_with_tag_comment(path: Path) -> None:
    text = path.read_text()
    uses = uses_of(yaml.safe_load(text))
    raw = [line for line in text.splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert len(raw) == len(uses), f"{path.name}: a `uses:` line yaml did not see"
    for ref in uses:
        if ref.startswith("./"):
            continue  # a local reusable workflow
        assert PINNED.fullmatch(ref), f"{path.name}: {ref} is not pinned to a 40-hex commit SHA"
        line = next(line for line in raw if ref in line)
        comment = line.split(ref, 1)[1]
        assert TAG_COMMENT.search(comment), f"{path.name}: {ref} has no `# vX.Y.Z` comment"


def test_workflows_found() -> None:
    assert WORKFLOWS
    assert any(
        not u.startswith("./") for p in WORKFLOWS for u in uses_of(yaml.safe_load(p.read_text()))
    )

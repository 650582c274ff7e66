"""Promote a model alias, gated by evaluation: both aliases are scored on the same test split
and the target alias moves only if the challenger is at least as good (and passes its checks).

    python jobs/promote.py --model-name digits-classifier --from challenger --to champion
    python jobs/promote.py ... --force --reason "rollback after incident 42"
Exit status 1 when the promotion is refused; the alias is then unchanged.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `app`

from app.cli import run_job
from app.promote import PromoteConfig, promote

if __name__ == "__main__":
    run_job(PromoteConfig, promote, __doc__ or "")

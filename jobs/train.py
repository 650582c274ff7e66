"""Train one image classifier with Ray Train (DDP) and record it in MLflow.

python jobs/train.py --dataset digits --model resnet18 --epochs 10 --num-workers 2
ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/train.py ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `app`

from app.cli import run_job
from app.train.config import TrainConfig
from app.train.driver import fit

if __name__ == "__main__":
    run_job(TrainConfig, lambda cfg: fit(cfg).to_json(), __doc__ or "")

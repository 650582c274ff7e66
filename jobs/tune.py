"""Hyperparameter sweep: Ray Tune (ASHA + HyperOpt) over Ray Train, one MLflow run per trial.

    python jobs/tune.py --dataset digits --model resnet18 --num-samples 8 --max-concurrent 2 \\
        --scheduler asha --search hyperopt --epochs 6 --register-as digits-classifier
    ray job submit --runtime-env runtime_env.yaml --working-dir . -- python jobs/tune.py ...
    ... the same command plus --resume continues a sweep whose driver died.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `app`

from app.cli import run_job
from app.tune.config import TuneConfig
from app.tune.sweep import run_sweep

if __name__ == "__main__":
    run_job(TuneConfig, run_sweep, __doc__ or "")

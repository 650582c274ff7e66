"""Evaluate a model on a test split: accuracy, macro F1, per-class table, confusion matrix,
hardest errors and behavioural checks, logged as an evaluation run linked to the model version.

    python jobs/evaluate.py --model-uri models:/digits-classifier@challenger --dataset digits
    (also runs:/<run_id>/model, models:/<name>/<version>, deprecated models:/<name>/<stage>)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `app`

from app.cli import run_job
from app.evaluate import EvaluateConfig, run_evaluation_job

if __name__ == "__main__":
    run_job(EvaluateConfig, run_evaluation_job, __doc__ or "")

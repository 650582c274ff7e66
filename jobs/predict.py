"""Score folders of images in bulk with a registered model: Ray Data over the files, the model
loaded once per actor (one GPU each where the cluster has GPUs), Parquet out, an MLflow run.

    python jobs/predict.py --model-uri models:/digits-classifier@champion \
        --input digits-images/ --output predictions/ [--top-k 3] [--batch-size 256]
    --input: a folder (recursive), s3://bucket/prefix, or a .txt list of paths / s3:// URIs
    --output: a folder or s3://bucket/prefix; one that holds files needs --overwrite
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for `app`

from app.batch_predict import PredictConfig, run_predict_job
from app.cli import run_job

if __name__ == "__main__":
    run_job(PredictConfig, run_predict_job, __doc__ or "")

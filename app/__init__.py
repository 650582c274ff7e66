"""Ray-native MLOps platform for image classification: the importable library."""

import os

# MLflow's telemetry fetches its settings in a background thread and, when that fails (any
# offline cluster), deletes an environment variable while other threads' HTTP requests iterate
# os.environ: a sweep trial failed on it ("API request to .../runs/log-batch failed with
# exception '_MLFLOW_TELEMETRY_SESSION_ID'"). Every process that imports the platform turns it
# off before MLflow is imported, unless the user has set the variable.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

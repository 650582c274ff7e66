# The MLflow tracking server of the Helm chart cluster/charts/mlflow: MLflow with the PostgreSQL
# driver and boto3 for S3 artifacts, at the versions of the project's lock file.
# Build from the repository root (03-mlflow.sh does, then pushes it to ECR):
#   docker build -f cluster/docker/mlflow.Dockerfile -t rayvision-mlflow:dev .
FROM python:3.11-slim-bookworm

# The chart runs the server as uid/gid 1000 with a read-only root filesystem.
RUN groupadd --gid 1000 mlflow && useradd --uid 1000 --gid 1000 --no-create-home mlflow

COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock mlflow psycopg2-binary boto3 \
    && rm /tmp/requirements.lock

USER mlflow
ENV HOME=/tmp
EXPOSE 5000
# checkov:skip=CKV_DOCKER_2: Kubernetes runs probes, Docker HEALTHCHECK is ignored by the kubelet

# The MLflow tracking server of the Helm chart cluster/charts/mlflow: MLflow with the auth extra
# (Flask-WTF: the chart runs `--app-name=basic-auth`), the PostgreSQL driver and boto3 for S3
# artifacts: the project's `server` extra, at the versions of requirements-dev.lock (the base
# requirements.lock, which the Ray image installs, leaves the server-only packages out).
# Build from the repository root (03-mlflow.sh does, then pushes it to ECR):
#   docker build -f cluster/docker/mlflow.Dockerfile -t rayvision-mlflow:dev .
FROM python:3.11-slim-bookworm

# The chart runs the server as uid/gid 1000 with a read-only root filesystem.
RUN groupadd --gid 1000 mlflow && useradd --uid 1000 --gid 1000 --no-create-home mlflow

COPY requirements-dev.lock /tmp/requirements-dev.lock
RUN pip install --no-cache-dir --constraint /tmp/requirements-dev.lock \
        "mlflow[auth]" psycopg2-binary boto3 \
    && rm /tmp/requirements-dev.lock

# The CA bundle of RDS's certificates, for the chart's database.sslMode verify-full.
# checkov:skip=CKV_DOCKER_4: ADD fetches AWS's published RDS CA bundle over HTTPS; COPY cannot fetch
ADD --chmod=644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem \
    /etc/ssl/certs/rds-global-bundle.pem

# The password-file sidecar (the chart runs `python -m cluster.mlflow.pgpass` from here):
# standard library and boto3 only.
WORKDIR /srv
COPY cluster/mlflow/pgpass.py cluster/mlflow/pgpass.py
# The login with the promotion gate, named by the chart's basic_auth.ini (authorization_function):
# importable by the `mlflow` console script from any directory.
COPY cluster/mlflow/alias_guard.py cluster/mlflow/alias_guard.py
ENV PYTHONPATH=/srv

USER mlflow
ENV HOME=/tmp
EXPOSE 5000
# checkov:skip=CKV_DOCKER_2: Kubernetes runs probes, Docker HEALTHCHECK is ignored by the kubelet

# Central MLflow tracking server (docs/mlflow-server.md). Included from the root Makefile, which
# defines PY and STAMP (the venv). Settings come from the environment: MLFLOW_ADMIN_PASSWORD
# always, the store and the artifact bucket when not the development default.
MLFLOW_STACK := $(PY) -m cluster.mlflow.stack
USERS_FILE ?= cluster/mlflow/users.example.yaml
# mlflow-backup: where to write (default backups/mlflow-<UTC time>); mlflow-restore: what to read.
BACKUP ?=

.PHONY: mlflow-up mlflow-down mlflow-status mlflow-users mlflow-backup mlflow-restore

mlflow-up: $(STAMP) ## start the MLflow server (PostgreSQL store, S3 artifacts, auth); prints its URI
	$(MLFLOW_STACK) up

mlflow-down: $(STAMP) ## stop what mlflow-up started
	$(MLFLOW_STACK) down

mlflow-status: $(STAMP) ## is the MLflow server started by mlflow-up running?
	$(MLFLOW_STACK) status

mlflow-users: $(STAMP) ## create users and grant permissions from USERS_FILE (runs as the admin)
	$(PY) -m cluster.mlflow.users --file $(USERS_FILE)

mlflow-backup: $(STAMP) ## back up the MLflow store and artifacts (BACKUP=dir, optional)
	PY=$(PY) cluster/scripts/backup-mlflow.sh $(BACKUP)

mlflow-restore: $(STAMP) ## restore BACKUP=dir into an empty database (stop the server first)
	PY=$(PY) cluster/scripts/restore-mlflow.sh $(BACKUP)

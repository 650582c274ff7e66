# Deployment targets: KubeRay manifests, MLflow chart, Terraform, setup scripts.
# Included by the root Makefile; every target runs from the repository root.

CLUSTER_PYTHON ?= .venv/bin/python
# checkov lives in a venv of its own: its pinned dependencies clash with the project's. One per
# version in the user's cache, shared by every checkout (a fresh clone, CI's included, does not
# spend minutes installing it again); the tests find it through CHECKOV.
CHECKOV_VERSION ?= 3.3.30
CHECKOV_VENV ?= $(HOME)/.cache/rayvision/venv-checkov-$(CHECKOV_VERSION)
export CHECKOV ?= $(CHECKOV_VENV)/bin/checkov
SETUP_SCRIPTS := cluster/scripts/setup

.PHONY: render-kuberay cluster-tools cluster-validate cluster-test cluster-dry-run deploy-aws verify-aws

render-kuberay: ## regenerate the RayService, RayJobs and RayCronJobs from their sources
	$(CLUSTER_PYTHON) cluster/kuberay/generate.py

cluster-tools: ## install the deployment checks' tools: checkov (own venv) and shellcheck
	test -x $(CHECKOV_VENV)/bin/checkov || \
	  { python3 -m venv $(CHECKOV_VENV) && \
	    $(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION); }
	command -v shellcheck >/dev/null || apt-get install -y shellcheck || \
	  { apt-get update && apt-get install -y shellcheck; }

cluster-validate: cluster-tools ## offline checks of cluster/ (no Ray cluster started)
	$(CLUSTER_PYTHON) -m pytest tests/cluster -m "not slow"

cluster-test: cluster-tools ## every deployment test, the local Ray autoscaling and auth ones included
	$(CLUSTER_PYTHON) -m pytest tests/cluster

cluster-dry-run: ## print what each setup script would run, running nothing
	for script in $(SETUP_SCRIPTS)/0*.sh; do bash $$script --dry-run || exit 1; done

deploy-aws: ## from an empty AWS account to the running platform (AWS_REGION, credentials)
	for step in 01-aws-resources 02-cluster 03-mlflow 04-users; do \
	  bash $(SETUP_SCRIPTS)/$$step.sh || exit 1; done

verify-aws: ## verify the deployment and test every connection
	bash $(SETUP_SCRIPTS)/06-verify-all.sh

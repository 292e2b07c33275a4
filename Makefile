# radplan: `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
RADPLAN_HOME ?= $(CURDIR)/.radplan
MLFLOW_UI_PORT ?= 5000
export RADPLAN_HOME
INSTALL_STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := orthanc dcmtk dicom3tools bcftools tabix samtools chromium openjdk-17-jre-headless postgresql

.PHONY: install system-deps demo test test-fast fuzz ui notebook mlflow-ui dashboard bench bench-models bench-federated federated-demo clean-data

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-runs only when a requirements file or pyproject.toml changes.
$(INSTALL_STAMP): $(PY) pyproject.toml requirements/lock.txt requirements/extra.txt requirements/test.txt requirements/data-packages.txt
	$(PY) -m pip install --quiet pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PY) -m pip install --quiet -r requirements/lock.txt
	# pyradiomics 3.1 has no buildable sdist; 3.0.1 builds against the installed numpy.
	$(PY) -m pip install --quiet --no-build-isolation pyradiomics==3.0.1
	$(PY) -m pip install --quiet -r requirements/extra.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/data-packages.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(INSTALL_STAMP)

# Debian packages for the real-service tests (Orthanc, dcmtk, dciodvfy, bcftools, Chromium, Java for Spark,
# PostgreSQL for the production-instance test);
# installed only when missing, and only when we are root.
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages (install them as root): $$missing" >&2; exit 1; \
	  fi; \
	fi

# The trial catalogue: ClinicalTrials.gov records from the shared sample data when it is beside the clone.
TRIALS ?= $(wildcard $(CURDIR)/../shared/data/trials)

demo: install system-deps
	RADPLAN_DEMO=1 $(PY) -m radplan_cli.main demo --patients 50 --seed 7 $(if $(TRIALS),--trials $(TRIALS))

# Two pytest-xdist workers: much of the suite waits on real services (Orthanc, Postgres, Spark, the daemon), so two
# workers keep both cores busy. --dist loadfile keeps a module's tests on one worker, so a module fixture (a
# production stack, a FLARE deployment) starts once. (xdist_group marks, --dist loadgroup, do nothing with
# pytest 9: xdist 3.8 renames a node id attribute pytest 9 no longer reads.) TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: install system-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(PY) -m pytest -m "not slow"

# A longer property-based fuzzing session than the test suite's (hypothesis examples per property).
fuzz: install
	RADPLAN_FUZZ_EXAMPLES=400 $(PY) -m pytest tests/reliability/test_parser_properties.py -q

ui: install
	$(PY) -c "from radplan_resources.instance import ensure_dagster_home; ensure_dagster_home()"
	RADPLAN_DEMO=$${RADPLAN_DEMO-1} DAGSTER_HOME=$(RADPLAN_HOME)/dagster_home $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The MLflow UI on the demo's tracking store, loopback only, telemetry off (radplan.settings.TELEMETRY_OFF).
mlflow-ui: install
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1 $(VENV)/bin/mlflow ui \
		--backend-store-uri sqlite:///$(RADPLAN_HOME)/lake/models/mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# The cohort dashboard and CDS Hooks service on http://127.0.0.1:8050, reading $(RADPLAN_HOME)/lake (the demo's by default).
dashboard: install
	RADPLAN_DEMO=$${RADPLAN_DEMO-1} $(PY) -m radplan_dashboard serve

# JupyterLab on notebooks/ with the project's kernel, on 127.0.0.1:8888, no news/update checks (after `make demo`).
notebook: install
	$(PY) -m radplan_cli.main notebook

bench: install system-deps
	$(PY) benchmarks/run_all.py

# Response-model quality on 1,000 + 1,000 synthetic patients (tabular path, no rendering): benchmarks/results/models.json.
bench-models: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_models.py

# The response model trained across three synthetic hospitals on NVIDIA FLARE (server + one process per site, 127.0.0.1).
# FEDERATED_ARGS: the command's options, e.g. FEDERATED_ARGS="--model segmentation".
federated-demo: install
	OMP_NUM_THREADS=1 $(PY) -m radplan_cli.main federated-demo $(FEDERATED_ARGS)

# Federated vs pooled vs site-alone response AUC on each site's held-out patients: benchmarks/results/federated.json.
bench-federated: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_federated.py

clean-data:
	rm -rf $(RADPLAN_HOME)

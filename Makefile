# Every target sets itself up: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.nbgate-installed
PYTEST_WORKERS ?= 2

.PHONY: install tools train score test lint bench lock mlflow clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-test.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nbgate needs Python 3.11 or newer, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
	@# Bytecode up front: with PYTHONDONTWRITEBYTECODE set (as on CI machines), every kernel
	@# would otherwise recompile scikit-learn, xgboost and pandas on import (~4 s a notebook).
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt -r requirements-test.txt --config-settings editable_mode=compat -e ".[example,bench,test,ui]"
	@# pytest's own compiled copies of the plugin modules, which it never writes where
	@# PYTHONDONTWRITEBYTECODE is set: without them every pytest process recompiles ~80 modules.
	bash .ci/warm-bytecode.sh $(PY)
	touch $@

train: $(STAMP)
	$(VENV)/bin/pytest -m train -v -o verbosity_test_cases=2

score: $(STAMP)
	$(VENV)/bin/pytest -m score -v -o verbosity_test_cases=2

# The MLflow UI on the local store `make train` logged to (http://127.0.0.1:5000). The UI and
# `mlflow server` are full mlflow, the `ui` extra (`pip install "nbgate[ui]"`), which `make install`
# puts into the project venv; a plain `pip install nbgate` has only mlflow-skinny.
mlflow: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

# Node 22 + gitlab-ci-local and rsync drive the CI-file tests; PostgreSQL's server binaries the
# shared-study and MLflow-on-PostgreSQL tests (needs root for apt-get).
tools:
	bash .ci/install-tools.sh

test: $(STAMP) tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest tests -n $(PYTEST_WORKERS) --dist loadfile -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench

# Regenerate the pinned locks after changing ranges in pyproject.toml.
lock: $(STAMP)
	$(UV) pip compile pyproject.toml --extra example --extra bench --extra ui -o requirements.txt --python-version 3.11
	$(UV) pip compile pyproject.toml --extra test -c requirements.txt -o requirements-test.txt --python-version 3.11 --no-header

clean:
	rm -rf $(VENV) reports mlflow.db mlruns .pytest_cache

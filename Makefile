# The two commands (see README): `make report` runs the pipeline, `make test` runs the tests.
# Both create .venv once and (re)install when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
# pytest-xdist workers for `make test`: one per core (tests/conftest.py keeps each test module on one worker)
TEST_WORKERS ?= auto
STAMP := $(VENV)/.installed

.PHONY: report test lint dryrun clean-results

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,timm]'
	@touch $(STAMP)

report: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) report

test: $(STAMP)
	$(VENV)/bin/ruff check src tests workflow bench
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests workflow bench
	$(VENV)/bin/ruff format --check src tests workflow bench
	$(VENV)/bin/snakemake --lint

dryrun: $(STAMP)
	$(VENV)/bin/snakemake -n report

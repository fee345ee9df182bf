# Model Releases: `make run` serves the embedded default, `make test` runs every test.
# Both do their own set-up (virtualenv, pinned dependencies, services) on a fresh machine.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements/base.txt requirements/dev.txt requirements/prod.txt requirements/constraints.txt

# The machine's own PostgreSQL and Redis (CI uses the same ones).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
PYTEST_ARGS ?=
RUN_ADDR ?= 127.0.0.1:8000

.PHONY: run test test-fast docker-test lint bench load venv localstack awscli services freeze clean

$(STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements/dev.txt -r requirements/prod.txt -c requirements/constraints.txt
	touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py seed_demo
	@echo "Serving on http://$(RUN_ADDR) (admin: http://$(RUN_ADDR)/admin/, create a user with '$(BIN)/python manage.py createsuperuser')"
	@# Beat runs beside the site; with no REDIS_URL its jobs run inside the beat process itself.
	$(BIN)/python -m celery -A site_config beat --loglevel INFO & beat=$$!; \
		trap 'kill $$beat 2>/dev/null' EXIT INT TERM; \
		$(BIN)/python manage.py runserver --noreload $(RUN_ADDR)

services:
	scripts/ensure-services.sh

# LocalStack's S3 (it checks signatures; moto does not), in a virtualenv of its own:
# built from requirements/localstack.txt, rebuilt when that file changes (about 80 s).
localstack: venv
	$(BIN)/python -c 'from tests.localstack import ensure_venv; ensure_venv("$(CURDIR)/.venv-localstack")'

test: venv localstack services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DATA_DIR=$(CURDIR)/var/test \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and in-process tests only (no servers or processes started): under a minute.
test-fast: venv services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DATA_DIR=$(CURDIR)/var/test \
		$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The production image built and its roles run against the suite's services (3-4 minutes
# with a warm cache; see scripts/docker-test.sh). Installs Debian's docker.io when missing.
docker-test: venv localstack services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DATA_DIR=$(CURDIR)/var/test \
		scripts/docker-test.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Performance targets, printed as one table (not part of `make test`).
bench: venv awscli
	command -v aria2c >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq aria2)
	$(BIN)/python bench/run.py

# awscli in a venv of its own (it pins its own botocore), to compare publish_release with `aws s3 cp`.
awscli: .venv-awscli/.installed
.venv-awscli/.installed: requirements/awscli.txt
	$(PYTHON) -m venv .venv-awscli
	.venv-awscli/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/awscli.txt
	touch $@

# gunicorn under wrk for 60 s per endpoint (about 4 minutes; not part of `make test`).
load: venv
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/load.py

# Re-pin every transitive dependency after changing a requirements file.
freeze: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pip==' > requirements/constraints.txt

clean:
	rm -rf $(VENV) .venv-localstack .venv-awscli var .pytest_cache

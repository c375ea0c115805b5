# One-command set-up: every target installs what it needs (venv, pip, apt) and is quick when done.
#   make demo   materialize many sizes from the bundled template, k-NN vs random init (~3 min)
#   make test   the test suite (what CI runs)
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
# torch/torchvision: on this project's CPU machines both wheels come from the local wheel store.
TORCH     ?= torch==2.14.1 torchvision==0.29.1
FMNIST    := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP     := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install data demo test test-fast bench pretrain clean

install: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[train,dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: install data
	$(PY) benchmarks/demo.py

test: install data
	$(PY) -m pytest -q

test-fast: install data
	$(PY) -m pytest -q -m "not slow"

bench: install data
	$(PY) benchmarks/load_time.py
	$(PY) benchmarks/train_overhead.py
	$(PY) benchmarks/storage_cost.py
	$(PY) benchmarks/init_quality.py
	$(PY) benchmarks/readme_table.py

pretrain: install data
	$(VENV)/bin/accelerate launch --cpu training/pretrain.py --config training/configs/fmnist.yaml

clean:
	rm -rf out .pytest_cache

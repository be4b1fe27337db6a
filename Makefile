# Two entry points, each installing what it needs into ./.venv:
#   make demo   - the main job: the nano AF-Next shipped in examples/ answers questions about example clips
#   make test   - the default test suite (slow tests excluded; `make test-all` runs them too)
# and the nano speedrun (~30 min on 2 CPU cores): `make speedrun`, `make speedrun-ablation` (+ no-RoTE run)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-all speedrun speedrun-ablation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned exactly (a CPU wheel); install it first so nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m afnext.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

speedrun: $(STAMP)
	$(BIN)/afnext speedrun

speedrun-ablation: $(STAMP)
	$(BIN)/afnext speedrun --ablation

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs

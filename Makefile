# sslaudit — set-up, demo and tests on a fresh machine (Python 3.11, pip, apt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup data demo test bench clean

$(BIN)/sslaudit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 is the CPU build (a local wheel here); newer pins pull a 5 GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

data:
	@if [ -z "$$SSLAUDIT_DATA" ] && [ ! -f $(FMNIST) ]; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

setup: $(BIN)/sslaudit data

demo: setup
	$(BIN)/sslaudit steal --victim simclr --json runs/demo.json

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs

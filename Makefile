# Two entry points: `make demo` (the main job on bundled data) and `make test`.
# Both bootstrap what they need on a fresh machine: a virtual environment with pinned packages,
# and the Fashion-MNIST Debian package (installed when we are root, otherwise we say what to run).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test data venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -n "$$GHOSTNETV3_DATA_DIR" ]; then \
		echo "Fashion-MNIST: present"; \
	elif [ "$$(id -u)" = "0" ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| { echo "could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"; exit 1; }; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or set GHOSTNETV3_DATA_DIR)"; exit 1; \
	fi

demo: $(STAMP) data
	$(BIN)/python scripts/demo.py

test: $(STAMP) data
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) runs

# The two commands of README.md. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml
	@command -v g++ >/dev/null || { echo "make: g++ is needed (Verilator compiles C++)"; exit 2; }
	@command -v perl >/dev/null || { echo "make: perl is needed (Verilator is a perl script)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m hoarfrost.demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not cosim"

clean:
	rm -rf $(VENV) .cache build *.egg-info

# The two commands of the README's quick start. Each sets up .venv on a fresh machine first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: demo test lint install clean readme

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded data: the baseline and every registered module in ResNet-8 on
# digits, 3 seeds x 5 epochs each (sized to stay well under 10 minutes on 2 idle cores; see the
# README), table and plots in $(DEMO_OUT) (re-running skips finished runs).
DEMO_OUT ?= runs/demo
DEMO_ARGS ?= --dataset digits --arch resnet8 --modules all --seeds 3 --epochs 5 --jobs 2

demo: $(STAMP)
	$(BIN)/chanattn compare $(DEMO_ARGS) --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info

readme: $(STAMP)
	$(BIN)/python -m chanattn.catalog README.md

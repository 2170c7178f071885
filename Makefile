# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv (exact pins from constraints.txt) and run the main job end to end
#   make test   create .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: venv demo test bench results codec adapters clean

venv: $(STAMP)

# pip compiles the bytecode at install: where PYTHONDONTWRITEBYTECODE is set (as here), nothing
# compiled later is kept, and without it every test process would recompile torch (~10 s each)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: venv
	VENV=$(VENV) DEMO_OUT=$(DEMO_OUT) scripts/demo.sh

# two workers (pytest-xdist); --dist loadfile keeps each file, and its module fixtures, on one worker
test: venv
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

bench: venv
	$(VENV)/bin/icmh bench codec --codec mbt2018-mean-tiny --quality 1 --random-weights
	$(VENV)/bin/icmh bench codec --codec mbt2018-mean --quality 3 --random-weights
	$(VENV)/bin/icmh bench models

# the rate–accuracy table of the README (every task, shipped codec and adapters, JPEG, WebP; ~30 min on 2 cores)
results: venv
	$(VENV)/bin/icmh eval --suite --out out/results

# rebuild the shipped codec and adapters from scratch (hours on a CPU; resumable: rerun to continue)
codec: venv
	VENV=$(VENV) scripts/train_codec_ladder.sh

adapters: venv
	VENV=$(VENV) scripts/train_adapters.sh

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis

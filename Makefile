# Backdoor Smoothing Workbench. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
# Progress bars off in tests (headless notebook runs would store every bar in the notebook).
export TQDM_DISABLE ?= 1

.PHONY: help demo test test-fast lab app bench screenshots detection-seeds clean-runs clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV)

install: $(STAMP)  ## create .venv and install the workbench

demo: $(STAMP)  ## set up, train a backdoor on digits and write reports/demo.html
	TQDM_DISABLE=0 $(PY) -m workbench demo

test: $(DEV)  ## set up and run the whole test suite (notebooks and browser tests included)
	$(PY) -m pytest -ra

test-fast: $(DEV)  ## the tests that train nothing big and start no browser
	$(PY) -m pytest -ra -m "not slow and not browser"

lab: $(STAMP)  ## open JupyterLab on notebooks/ (localhost only, token on)
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter $(VENV)/bin/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks

# The classroom app. On a LAN: make app APP_IP=0.0.0.0 APP_ARGS=--token=<a-secret> (see README).
APP_IP   ?= 127.0.0.1
APP_PORT ?= 8866
APP_ARGS ?=
app: $(STAMP)  ## serve the classroom (notebooks/classroom.ipynb) with Voila at http://127.0.0.1:8866
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter $(VENV)/bin/voila notebooks/classroom.ipynb --no-browser \
		--port=$(APP_PORT) --Voila.ip=$(APP_IP) $(APP_ARGS)

bench: $(DEV)  ## run the benchmarks (prints ratios; see benchmarks/RESULTS.md)
	$(PY) benchmarks/training.py
	$(PY) benchmarks/smoothness.py
	$(PY) benchmarks/widgets.py
	$(PY) benchmarks/sweep.py
	$(PY) benchmarks/cache.py

# The multi-seed detection study (issue 20; about 2 h on 2 cores): in the background, resumable
# (stop it any time; the same target continues from the finished jobs). Log: reports/detection-seeds.log
detection-seeds: $(STAMP)  ## every detector on 3 models per attack + 20 clean models per dataset, in the background
	mkdir -p reports
	nohup $(PY) -m workbench.detection --seeds 0 1 2 --workers 2 > reports/detection-seeds.log 2>&1 &
	@echo "started: tail -f reports/detection-seeds.log; report: reports/detection-seeds.html"

screenshots: $(DEV)  ## remake docs/img from the current app (headless Chromium)
	$(PY) docs/make_screenshots.py

clean-runs:  ## delete cached runs (they retrain on next use)
	rm -rf data/runs

clean:  ## delete the virtual environment, caches and reports
	rm -rf $(VENV) reports test-artifacts .pytest_cache

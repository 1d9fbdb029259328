# Two commands from a fresh clone:  `make run` (main job)  and  `make test` (tests).
# Both create .venv first if needed: torch (CPU wheel) first, then madyn and its tools.
VENV  ?= .venv
CORES ?= 2
TORCH ?= torch==2.13.0
SUITE ?=
CONFIG = $(if $(SUITE),--config suite=$(SUITE))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run smoke test lint docs
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,slurm,docs]'
	touch $@

PHASES = suite_all extract_all fit_all features_all predict_all report_all

run: install            ## train and analyse the embedded suite (or SUITE=...), phase by phase, timed
	@set -e; start=$$(date +%s); times=""; \
	for p in $(PHASES); do t=$$(date +%s); snakemake $$p --cores $(CORES) $(CONFIG); \
	  times="$$times$$(printf '  %-12s %5d s' $${p%_all} $$(( $$(date +%s) - t )))\n"; done; \
	snakemake --cores $(CORES) $(CONFIG); \
	printf 'phase times (wall, --cores $(CORES)):\n'"$$times"'  %-12s %5d s\n' total $$(( $$(date +%s) - start ))

smoke: install          ## the whole pipeline on the two-model smoke suite
	snakemake --cores $(CORES) --config suite=smoke

test: install           ## the test suite (slow tests excluded; `pytest -m slow` runs them)
	python -m pytest -q

lint: install
	ruff check src tests benchmarks

docs: install           ## the documentation site (docs/, mkdocs.yml) into site/; fails on any warning
	mkdocs build --strict

# Two commands from a fresh clone:  `make run` (main job)  and  `make test` (tests).
# Both create .venv first if needed: torch (CPU wheel) first, then madyn and its tools.
VENV  ?= .venv
CORES ?= 2
TORCH ?= torch==2.13.0
SUITE ?=
CONFIG = $(if $(SUITE),--config suite=$(SUITE))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run compare pull smoke test lint docs
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,slurm,docs]'
	touch $@

# `make run` drives `dvc repro` one stage at a time (each stage calls Snakemake), so that
# afterwards `dvc status` is clean and a second `dvc repro` runs nothing; the DVC stages use
# every core (`snakemake --cores all`). SUITE=name runs that suite with plain Snakemake
# instead (DVC follows params.yaml's `suite`). EXTRA_SUITES: suites run after the DVC
# pipeline with plain Snakemake (e.g. a released reference suite); their results stay out
# of DVC. Phase times: printed and kept in results/<suite>/logs/phase_times.tsv.
STAGES = source suite extract fit features predict report
PHASES = suite_all extract_all fit_all features_all predict_all report_all
EXTRA_SUITES ?= firsttoken-reference
ACTIVE = $(shell sed -n 's/^suite: *\([A-Za-z0-9_.-]*\).*/\1/p' params.yaml)

run: install            ## the embedded suite (params.yaml's `suite`) through DVC, phase by phase, timed
ifeq ($(SUITE),)
	@set -e; start=$$(date +%s); times=""; \
	for s in $(STAGES); do t=$$(date +%s); dvc repro --single-item $$s; \
	  times="$$times$$(printf '%s\t%d' $$s $$(( $$(date +%s) - t )))\n"; done; \
	for x in $(EXTRA_SUITES); do t=$$(date +%s); snakemake --cores $(CORES) --config suite=$$x; \
	  times="$$times$$(printf '%s\t%d' suite=$$x $$(( $$(date +%s) - t )))\n"; done; \
	times="$$times$$(printf 'total\t%d' $$(( $$(date +%s) - start )))\n"; \
	mkdir -p results/$(ACTIVE)/logs; printf 'phase\twall_s\n'"$$times" > results/$(ACTIVE)/logs/phase_times.tsv; \
	printf 'phase times (wall s; DVC stages use every core):\n'; printf "$$times" | sed 's/^/  /'; \
	dvc status
else
	@set -e; start=$$(date +%s); times=""; \
	for p in $(PHASES); do t=$$(date +%s); snakemake $$p --cores $(CORES) $(CONFIG); \
	  times="$$times$$(printf '  %-12s %5d s' $${p%_all} $$(( $$(date +%s) - t )))\n"; done; \
	snakemake --cores $(CORES) $(CONFIG); \
	printf 'phase times (wall, --cores $(CORES)):\n'"$$times"'  %-12s %5d s\n' total $$(( $$(date +%s) - start ))
endif

compare: install        ## dvc exp show: the headline metrics and the params a researcher changes
	madyn compare $(if $(ONLY_CHANGED),--only-changed)

pull: install           ## every result from the DVC remote, nothing recomputed (dvc status clean, snakemake -n: nothing to do)
	dvc pull
	madyn dvc-outs source
	snakemake --cores 1 --touch

smoke: install          ## the whole pipeline on the two-model smoke suite
	snakemake --cores $(CORES) --config suite=smoke

test: install           ## the test suite (slow tests excluded; `pytest -m slow` runs them)
	python -m pytest -q

lint: install
	ruff check src tests benchmarks

docs: install           ## the documentation site (docs/, mkdocs.yml) into site/; fails on any warning
	mkdocs build --strict

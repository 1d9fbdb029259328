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
# instead (DVC follows params.yaml's `suite`). EXTRA_SUITES: suites run with plain Snakemake
# beside the DVC pipeline (the committed first-token reference by default; their results
# stay out of DVC), at the lowest CPU priority so that they use only the cores the
# pipeline leaves idle; their output goes to results/<suite>/logs/make_run.log. Phase
# times: printed and kept in results/<suite>/logs/phase_times.tsv. params.yaml is checked
# first by `madyn check` (a bounded parse: DVC would expand a YAML alias bomb into gigabytes).
STAGES = source suite extract fit features predict report
PHASES = suite_all extract_all fit_all features_all predict_all report_all
EXTRA_SUITES ?= firsttoken-reference
ACTIVE = $(shell sed -n 's/^suite: *\([A-Za-z0-9_.-]*\).*/\1/p' params.yaml)

run: install            ## the embedded suite through DVC, and the first-token reference beside it, timed
	@madyn check params.yaml > /dev/null  # bounded parse first: DVC alone expands YAML aliases
ifeq ($(SUITE),)
	@set -e; start=$$(date +%s); times=""; trap 'kill $$(jobs -p) 2>/dev/null || true' EXIT; \
	mkdir -p results/$(ACTIVE)/logs; status=results/$(ACTIVE)/logs/extra_suites.tsv; : > $$status; \
	( for x in $(EXTRA_SUITES); do t=$$(date +%s); mkdir -p results/$$x/logs; \
	    if nice -n 19 snakemake --cores $(CORES) --config suite=$$x > results/$$x/logs/make_run.log 2>&1; \
	    then rc=0; else rc=$$?; fi; \
	    printf '%s\t%d\t%d\n' $$x $$rc $$(( $$(date +%s) - t )) >> $$status; done ) & \
	for s in $(STAGES); do t=$$(date +%s); dvc repro --single-item $$s; \
	  times="$$times$$(printf '%s\t%d' $$s $$(( $$(date +%s) - t )))\n"; done; \
	t=$$(date +%s); wait; \
	times="$$times$$(printf 'wait\t%d' $$(( $$(date +%s) - t )))\n"; \
	while IFS="$$(printf '\t')" read -r x rc secs; do \
	  times="$$times$$(printf 'suite=%s\t%d' $$x $$secs)\n"; \
	  if [ "$$rc" != 0 ]; then tail -n 20 results/$$x/logs/make_run.log; \
	    echo "make run: suite $$x failed (exit $$rc): results/$$x/logs/make_run.log" >&2; exit 1; fi; \
	done < $$status; \
	times="$$times$$(printf 'total\t%d' $$(( $$(date +%s) - start )))\n"; \
	printf 'phase\twall_s\n'"$$times" > results/$(ACTIVE)/logs/phase_times.tsv; \
	printf 'phase times (wall s; DVC stages use every core; extra suites beside them):\n'; \
	printf "$$times" | sed 's/^/  /'; \
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
	@madyn check params.yaml > /dev/null
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

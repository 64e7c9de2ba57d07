# From a fresh clone: `make demo` and `make test` set up .venv if needed, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Where built organisms and teacher outputs are cached (content-addressed).
export DOUBLEBIND_CACHE ?= $(CURDIR)/.cache/doublebind

.PHONY: setup demo test bench bench-trl gpu-wheels lock clean

setup: $(DEV_STAMP)

# CPU PyTorch first (the wheel on disk), so the package's torch range installs nothing more.
# Where pip would take PyPI's CUDA build instead: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_PIP_ARGS ?=

# The demo needs the package alone; the tests also need the dev extras (pytest, datasets,
# inspect_ai). Bytecode: pip installs with --no-compile, and `compileall` then writes the
# .pyc files in parallel (-j 0). They must exist: where PYTHONDONTWRITEBYTECODE is set (as on
# the machines this is developed on) Python never caches what it compiles, and every process
# (the CLI, each study worker, each test subprocess) recompiled about 1,600 modules of torch
# and transformers on import: 9.4 s to import the training code, 3.9 s with the cache.
# The one file skipped is a torch test helper written in Python 3.12 syntax.
COMPILE := $(BIN)/python -m compileall -q -j 0 -x 'py312_intrinsics' $(VENV)/lib >/dev/null

# The libraries' versions: pinned by constraints.txt (what the suite last passed with), so a
# fresh clone installs the same set whatever has been released since. `make setup CONSTRAINTS=`
# takes the newest releases the package's ranges allow; `make lock` writes those to the file.
CONSTRAINTS ?= constraints.txt
PIP := $(BIN)/pip install -q --no-compile $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# torch alone first, pinned but unconstrained: under TORCH_PIP_ARGS="--index-url …" its own
# dependencies come from that index, which may lack the locked versions; the next step
# brings them to the locked versions from the usual index.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile $(TORCH_PIP_ARGS) torch==2.13.0
	$(PIP) -e .
	$(COMPILE)
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) -e ".[dev]"
	$(COMPILE)
	touch $(DEV_STAMP)

# The default study (2 scenarios x 5 techniques x 3 seeds, a subset of configs/studies/matrix.yaml) and its report.
# Resumable: rerunning after an interruption finishes only the missing runs.
demo: $(STAMP)
	$(BIN)/doublebind study run configs/studies/default.yaml --out runs/demo
	$(BIN)/doublebind report runs/demo

# The suite runs in TEST_WORKERS processes (pytest-xdist), one torch thread each; the quick
# organism is built once for all of them (tests/conftest.py). TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/organism_build.py
	$(BIN)/python benchmarks/distill_speed.py

# doublebind against TRL on the same SFT and soft-label jobs (installs the bench extra: TRL).
bench-trl: $(DEV_STAMP)
	$(PIP) -e ".[bench]"
	$(COMPILE)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/vs_trl.py

# For benchmarks/gpu_check.sh on a bare CUDA machine (Python 3.12, torch with CUDA, no network):
# the wheels its image lacks (pydantic) or holds in other versions (transformers, peft,
# accelerate), at this venv's versions, into .whl/ (ignored; carry it to that machine).
# Except transformers, pinned where GPU_PINS says: from 5.25 it needs huggingface-hub>=2.4
# (and that, httpx2), and the image holds huggingface_hub 1.33, which 5.24 accepts.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection transformers peft accelerate
GPU_PINS := transformers==5.24.0
gpu-wheels: $(STAMP)
	rm -rf .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	    $$($(BIN)/python -c "from importlib.metadata import version; pins = dict(p.split('==') for p in '$(GPU_PINS)'.split()); print(*(f'{n}=={pins.get(n, version(n))}' for n in '$(GPU_WHEELS)'.split()))")
	ls .whl

# Rewrite constraints.txt from a fresh install of the newest releases in range (into .venv-lock,
# removed after); run `make test` with the new file before committing it.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --no-compile $(TORCH_PIP_ARGS) torch==2.13.0
	.venv-lock/bin/pip install -q --no-compile -e ".[dev]"
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | sed 's/+[A-Za-z0-9.]*$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock
	git diff --stat constraints.txt || true

clean:
	rm -rf runs .cache

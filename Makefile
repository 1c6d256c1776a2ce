# alexnet-keras: every environment is created from the pinned requirements files.
#   make demo   builds .venv if missing, trains on the embedded dataset, evaluates, exports
#               for TF Serving and answers the demo's image folder through the export
#   make test   builds both environments if missing, runs `ruff check .`, `ruff format --check .`
#               and the whole test suite
#   make bench  runs the benchmark scripts
#   make bench-peer  creates .venv-peer (PyTorch, optional) and times our AlexNet against it
#   make lock   regenerates the exact pins from requirements*.in

PYTHON ?= python3
VENV := .venv
VENV_VALIDATE := .venv-validate
VENV_PEER := .venv-peer
PY := $(VENV)/bin/python
PY_VALIDATE := $(VENV_VALIDATE)/bin/python
RUFF := $(VENV)/bin/ruff
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
PIP_INSTALL := pip install --quiet --disable-pip-version-check --no-deps
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# Quieter TensorFlow start-up logs; errors still print.
export TF_CPP_MIN_LOG_LEVEL ?= 1

.PHONY: demo demo-run test test-fast test-large test-main test-validate bench env env-validate lock clean

DEMO_RECORDS := datasets/synthetic/records
DEMO_IMAGES := datasets/synthetic/images

demo: $(VENV)/.installed
	@if [ -f $(VENV_VALIDATE)/.installed ]; then $(MAKE) --no-print-directory validate; else echo "no $(VENV_VALIDATE): data validation skipped (make env-validate adds it)"; fi
	$(MAKE) --no-print-directory demo-run

# The demo's steps with whatever $(PY) is: the Docker image runs `make demo-run PY=python`.
demo-run:
	$(PY) train.py
	$(PY) evaluate.py
	$(PY) evaluate.py --ten_crops
	$(PY) export/export_model.py --model runs/demo/alexnet.keras --export_base exports/alexnet
	$(PY) evaluate.py --model exports/alexnet --data_dir $(DEMO_RECORDS) --no_progress
	$(PY) predict.py --model exports/alexnet --output runs/demo/predictions.jsonl --overwrite \
		--no_progress $(DEMO_IMAGES)

# The main suite runs in TEST_WORKERS processes (pytest-xdist), a module per process at a
# time; `make test TEST_WORKERS=0` runs it in this one. Three on a 2-core machine: many tests
# wait on processes of their own (workers, kill -9 and rerun, TensorFlow starting), and a third
# test process fills the cores meanwhile (the suite took 7.0 min against 8.6 with two).
TEST_WORKERS ?= 3
test: $(VENV)/.installed $(VENV_VALIDATE)/.installed
	$(RUFF) check .
	$(RUFF) format --check .
	@# The validation suite (one process, mostly waiting on Beam) runs beside the main one; its
	@# report is printed when both are done, and either failing fails the target.
	@log=$$(mktemp); $(PY_VALIDATE) -m pytest tests_validate >$$log 2>&1 & validate=$$!; \
	echo "$(PY) -m pytest tests -m 'not large' -n $(TEST_WORKERS) --dist loadscope"; \
	$(PY) -m pytest tests -m "not large" -n $(TEST_WORKERS) --dist loadscope; main=$$?; \
	wait $$validate; validated=$$?; \
	echo "$(PY_VALIDATE) -m pytest tests_validate"; cat $$log; rm -f $$log; \
	test $$main -eq 0 -a $$validated -eq 0

# The statistical checks that a recipe learns (marked large: the demo recipe on two shapes,
# fine-tuning's transfer, Grad-CAM on a trained model; about 5 minutes of CPU), as keras-hub
# keeps its large tests: run when the recipe, the model or the training loop changes.
test-large: $(VENV)/.installed
	$(PY) -m pytest tests -m large -n $(TEST_WORKERS) --dist loadscope

# Under 2 minutes: everything but in-process training and the tests that start processes
# (scripts, workers, kill -9, the serving stand-in, TFDV), which are marked slow.
test-fast: $(VENV)/.installed
	$(RUFF) check .
	$(RUFF) format --check .
	$(PY) -m pytest tests -m "not slow" -n $(TEST_WORKERS) --dist loadscope

bench: $(VENV)/.installed
	$(PY) bench/model_speed.py --compare_keras_groups
	$(PY) bench/converter_speed.py
	$(PY) bench/input_speed.py
	$(PY) bench/train_speed.py
	$(PY) bench/serving_speed.py
	@if [ -f $(VENV_VALIDATE)/.installed ]; then $(MAKE) --no-print-directory bench-validate; fi

# Data validation (TFDV, in .venv-validate) of the demo records, built once by train.py's helper.
VALIDATE_DATA := $(PY_VALIDATE) data/validate_data.py
.PHONY: validate bench-validate
validate: $(VENV_VALIDATE)/.installed $(DEMO_RECORDS)/dataset.json
	$(VALIDATE_DATA) stats --data_dir $(DEMO_RECORDS)
	$(VALIDATE_DATA) schema --data_dir $(DEMO_RECORDS)
	$(VALIDATE_DATA) validate --data_dir $(DEMO_RECORDS) --split train
	$(VALIDATE_DATA) validate --data_dir $(DEMO_RECORDS) --split validation

bench-validate: $(VENV_VALIDATE)/.installed $(DEMO_RECORDS)/dataset.json
	$(PY_VALIDATE) bench/validate_speed.py --data_dir $(DEMO_RECORDS)

# The PyTorch peer of issue 12, in its own environment: never part of `make test`. It is
# installed with pip, which honours PIP_FIND_LINKS (e.g. a folder with a CPU-only torch
# wheel); without one, pip takes torch==2.13.0 from the package index.
.PHONY: bench-peer env-peer
PEER_ARGS ?= --rounds 3
bench-peer: $(VENV)/.installed $(VENV_PEER)/.installed
	$(PY) bench/peer_speed.py --peer_python $(VENV_PEER)/bin/python $(PEER_ARGS)

env-peer: $(VENV_PEER)/.installed

$(VENV_PEER)/.installed: requirements-peer.txt
	rm -rf $(VENV_PEER)
	$(PYTHON) -m venv $(VENV_PEER)
	$(VENV_PEER)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-peer.txt
	$(VENV_PEER)/bin/pip check
	touch $@

$(DEMO_RECORDS)/dataset.json: | $(VENV)/.installed
	$(PY) -c 'import train; train.build_demo_dataset()'

env: $(VENV)/.installed
env-validate: $(VENV_VALIDATE)/.installed

# Every package is pinned in the requirements files, so `uv pip install --no-deps` installs
# exactly that set with no resolver work (seconds, where pip takes minutes); `uv pip check`
# then proves the set is consistent. uv itself is pinned and lives in .tools/.
# --compile-bytecode: the .pyc files are written once, at install, in parallel (uv does not by
# default). Without them every process compiles TensorFlow's Python anew where the .pyc cannot
# be written (PYTHONDONTWRITEBYTECODE, a read-only image): `import tensorflow, keras` took 9 s
# instead of 3.5 s on a 2-core EPYC, in every command and every test process.
UV_INSTALL = $(UV) pip install --quiet --no-deps --compile-bytecode --python $(1)/bin/python

$(VENV)/.installed: requirements.txt pyproject.toml | $(UV)
	rm -rf $(VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(call UV_INSTALL,$(VENV)) -r requirements.txt
	$(call UV_INSTALL,$(VENV)) --no-build-isolation --editable .
	$(UV) pip check --quiet --python $(VENV)/bin/python
	touch $@

# requirements-validate.txt holds two packages published only as C/C++ sources, pyfarmhash and
# crcmod: uv compiles them, which needs a C and C++ compiler and Python's headers (Debian,
# Ubuntu: apt-get install g++ python3-dev). They are checked first, for a message that says so
# instead of a compiler's error halfway through; the Docker image's validate target needs
# neither on the host (it compiles them in a stage of its own).
define CHECK_BUILD_TOOLS
import os, shutil, sys, sysconfig
compilers = [os.environ.get(name) or sysconfig.get_config_var(name) or default
             for name, default in (("CC", "cc"), ("CXX", "c++"))]
missing = [command.split()[0] for command in compilers if not shutil.which(command.split()[0])]
if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
    missing.append("Python.h (the Python headers)")
if missing:
    sys.exit("error: $(VENV_VALIDATE) compiles pyfarmhash and crcmod, which publish no wheels "
             "for Linux, and this machine has no " + ", ".join(missing) + ". Install a compiler "
             "and the headers (Debian, Ubuntu: sudo apt-get install g++ python3-dev), or use "
             "the Docker image's validate target (docker build --target validate ...).")
endef
export CHECK_BUILD_TOOLS

$(VENV_VALIDATE)/.installed: requirements-validate.txt | $(UV)
	@$(PYTHON) -c "$$CHECK_BUILD_TOOLS"
	rm -rf $(VENV_VALIDATE)
	$(UV) venv --quiet --python $(PYTHON) $(VENV_VALIDATE)
	$(call UV_INSTALL,$(VENV_VALIDATE)) -r requirements-validate.txt
	$(UV) pip check --quiet --python $(VENV_VALIDATE)/bin/python
	touch $@

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/$(PIP_INSTALL) uv==$(UV_VERSION)

lock: $(UV)
	$(UV) pip compile $(LOCK_TARGET) --upgrade requirements.in -o requirements.txt
	$(UV) pip compile $(LOCK_TARGET) --upgrade requirements-validate.in -o requirements-validate.txt
	$(UV) pip compile $(LOCK_TARGET) requirements-cuda.in -c requirements.txt -o requirements-cuda.txt

clean:
	rm -rf $(VENV) $(VENV_VALIDATE) $(VENV_PEER) $(TOOLS) runs datasets exports .pytest_cache .ruff_cache

# jafr_kernels: setup, tests, the study, benchmarks. Run as root on a fresh Debian machine:
#   make study   # set up everything, then run the Fashion-MNIST study (runs/study/report.md); its size follows
#                # the device (3 seeds on a CPU, a larger study on a GPU); STUDY_ARGS="--seeds 5" etc. change it
#   make test    # set up everything, then run the test suite
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2
DATASET := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SOURCES := setup.py pyproject.toml $(wildcard csrc/*)

.PHONY: setup test study bench gpu-check info clean

setup: $(DATASET) $(VENV)/.installed

# The embedded dataset: Fashion-MNIST from Debian's package (never downloaded at run time).
$(DATASET):
	apt-get update
	apt-get install -y dataset-fashion-mnist

$(VENV)/.torch:
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip setuptools wheel ninja
	$(PYTHON) -m pip install torch==2.14.1 torchvision==0.29.1
	touch $@

# The extension is built against the installed torch (hence --no-build-isolation), CUDA path included
# whenever nvcc is present (CUDA_HOME), GPU or not.
$(VENV)/.installed: $(VENV)/.torch $(SOURCES)
	$(PYTHON) -m pip install --no-build-isolation -v -e ".[all]" 2>&1 | tee $(VENV)/build.log | grep -E "nvcc|jafr_kernels:|Successfully|error" || true
	$(PYTHON) -c "import jafr_kernels.kernels.cpp as c; print('jafr_kernels._C built, CUDA path:', c.built_with_cuda())"
	touch $@

test: setup
	JAFR_REQUIRE_EXTENSION=1 JAFR_REQUIRE_CUDA_BUILD=$${JAFR_REQUIRE_CUDA_BUILD:-1} $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

study: setup
	time $(VENV)/bin/jafr study $(STUDY_ARGS)

# Results go to runs/benchmarks/ (untracked); BENCH_ARGS=--update-readme publishes a full run into
# benchmarks/results/ and regenerates the table of benchmarks/README.md.
bench: setup
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

# On a CUDA machine with torch and Triton installed (no pip needed): build, GPU tests, quick benchmarks.
gpu-check:
	PYTHON=$$( [ -x $(PYTHON) ] && echo $(PYTHON) || echo python3 ) bash scripts/device_check.sh

info: setup
	$(PYTHON) -m jafr_kernels.info

clean:
	rm -rf build *.egg-info jafr_kernels/_C*.so $(VENV)/.installed

# The two commands: `make lab` runs the main job (the mode-collapse lab), `make test` the tests.
# Both create a virtual environment in $(VENV) on first use: torch (the CPU wheel, unless the
# Python that creates it already has a CUDA torch, which the venv then reuses) and fastgan built
# against it, with the test, lab and ctgan extras. Every install is constrained to the torch already
# there (.ci/constraints.txt pins the CPU wheel's version; with a CUDA torch, a pin to its own
# version), so no dependency (ctgan asks for a bare torch) can pull another torch. The install is
# redone when the build files change.
#
#   make lab                       # fastgan lab (add LAB_ARGS="--full" for the published length)
#   make test                      # TRITON_INTERPRET=1 pytest (Triton kernels on CPU tensors)
#   make test PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"   # CPU torch from its index
PYTHON ?= python3
VENV ?= .venv
PIP_ARGS ?=
LAB_ARGS ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastgan-installed

.PHONY: lab test fuzz clean

lab: $(STAMP)
	$(BIN)/fastgan lab $(LAB_ARGS)

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The differential fuzzer (tests/test_fuzz.py) with a long budget: fresh random draws, failures kept in
# build/hypothesis-fuzz for replay. make fuzz FASTGAN_FUZZ_EXAMPLES=200 for a shorter run.
fuzz: $(STAMP)
	TRITON_INTERPRET=1 FASTGAN_FUZZ_PROFILE=long FASTGAN_FUZZ_EXAMPLES=$${FASTGAN_FUZZ_EXAMPLES:-2000} \
	  $(BIN)/python -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

$(STAMP): pyproject.toml setup.py CMakeLists.txt .ci/constraints.txt $(wildcard csrc/*)
	@echo "creating $(VENV): torch and numpy, then fastgan with its C++ kernels compiled (a few minutes, once)"
	@if $(PYTHON) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	  echo "using the CUDA torch of $(PYTHON)"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV) && \
	  $(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt && \
	  $(BIN)/python -m pip install -qq -c $(VENV)/torch-pin.txt --no-build-isolation -e ".[test,lab,ctgan]" $(PIP_ARGS); \
	else \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/python -m pip install -q --upgrade pip && \
	  $(BIN)/python -m pip install -q -c .ci/constraints.txt $(PIP_ARGS) torch numpy "setuptools>=77" wheel && \
	  $(BIN)/python -m pip install -qq -c .ci/constraints.txt --no-build-isolation -e ".[test,lab,ctgan]" $(PIP_ARGS); \
	fi
	@touch $@

clean:
	rm -rf $(VENV) build

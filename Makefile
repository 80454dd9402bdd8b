# Two commands a fresh machine needs (see README): `make demo` (the fibration pipeline on the
# demo recipe) and `make test`.
# torch==2.13.0 is installed first and pinned with constraints.txt for every later pip call,
# so nothing can pull a different torch (and gigabytes of CUDA packages) behind our back.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/fiberlab pipeline fibration demo run=demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) train_dir

# The CUDA check (docs/gpu.md): no venv set-up here, since a GPU machine brings its own python3 and
# torch. `make gpu-wheels` (where pip reaches PyPI) fills .whl/ with what a machine without network
# lacks; `make gpu-check` runs the CUDA tests and the benchmarks on CUDA in under 8 minutes.
GPU_PY ?= python3
.PHONY: gpu-check gpu-wheels

gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

gpu-wheels:
	bash scripts/gpu_wheels.sh

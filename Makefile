# make test / make demo work on a fresh clone: they create .venv and install everything once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: install test test-fast demo sweep-demo gpu-fit clean-venv

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q -r requirements.txt
	# detectron2's Python code from sal-detectron2 (a cp310 wheel); its _C is ignored on 3.11.
	$(PY) -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 \
		--implementation cp --upgrade --target "$(PURELIB)" sal-detectron2==0.7.2
	# The wheel also ships a top-level `tools` package that would shadow ours.
	rm -rf "$(PURELIB)/tools"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

STYLED := randwire_d2 tools tests benchmarks setup.py
# Two pytest-xdist workers (the tests run one torch thread each), a test file per worker at a time.
PYTEST_WORKERS ?= -n 2 --dist loadfile

test: $(STAMP)
	$(VENV)/bin/black -l 100 --check -q $(STYLED)
	$(VENV)/bin/isort --check -q $(STYLED)
	$(PY) -m pytest -q $(PYTEST_WORKERS) --durations=15 tests

# The edit loop's tier (under 2 minutes on 2 cores): everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not slow" --durations=10 tests

demo: $(STAMP)
	$(PY) tools/demo.py

# Whether every Triton node-kernel variant the shipped networks launch fits sm_80 and sm_90,
# compiled without a GPU (about 25 minutes on 2 cores), then the kernels' static cost table.
gpu-fit: $(STAMP)
	env -u TRITON_INTERPRET $(PY) benchmarks/kernels.py fit --json output/gpu_fit.json
	env -u TRITON_INTERPRET $(PY) benchmarks/kernels.py costs --networks c109 --dtypes bf16 fp32

# Reduced Fig. 3 and Fig. 6 on the embedded data (each under 20 minutes on 2 CPU cores).
SWEEP_DEMO := $(PY) tools/sweep.py --config-file configs/demo/randwire_sweep_demo.yaml
SWEEP_GENS := --generators er:P=0.2 --generators ba:M=5 --generators ws:K=4,P=0.75
sweep-demo: $(STAMP)
	OMP_NUM_THREADS=1 $(SWEEP_DEMO) $(SWEEP_GENS) --generators ws:K=4,P=0 --seeds 1-3 \
		--output output/sweeps/demo_fig3
	OMP_NUM_THREADS=1 $(SWEEP_DEMO) $(SWEEP_GENS) --seeds 1-2 --match-flops \
		--node-ops sep_conv3x3 --node-ops conv3x3 --node-ops max_pool3x3_conv1x1 \
		--node-ops avg_pool3x3_conv1x1 --output output/sweeps/demo_fig6 PRETRAIN.EPOCHS 5

clean-venv:
	rm -rf $(VENV)

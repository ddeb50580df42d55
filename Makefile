# Two set-up commands on a fresh machine: `make demo` and `make test` (both create .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
# TensorRT's Python plugin layer of each pinned TensorRT, for the plugin contract tests (tests/tensorrt_plugin_layers.py).
TRT_PLUGIN_LAYERS := $(VENV)/tensorrt-plugin-layers
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-fast demo bench bench-ops gpu lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,plot,onnx]'
	touch $(STAMP)

$(TRT_PLUGIN_LAYERS)/.fetched: tests/tensorrt_plugin_layers.py | $(STAMP)
	rm -rf $(TRT_PLUGIN_LAYERS)
	$(PY) tests/tensorrt_plugin_layers.py $(TRT_PLUGIN_LAYERS)
	touch $@

TEST_ENV := ANCHORDETR_TRT_PLUGIN_LAYERS=$(abspath $(TRT_PLUGIN_LAYERS)) TRITON_INTERPRET=1

# The whole CPU suite (what CI runs): Triton kernels under the interpreter; GPU and TensorRT tests are
# left to `make gpu`. docs/testing.md lists the tiers.
test: venv $(TRT_PLUGIN_LAYERS)/.fetched
	$(TEST_ENV) $(PY) -m pytest -q -m "not gpu and not tensorrt" --durations=10

# The edit loop: the same without the tests marked slow (a few minutes).
test-fast: venv $(TRT_PLUGIN_LAYERS)/.fetched
	$(TEST_ENV) $(PY) -m pytest -q -m "not gpu and not tensorrt and not slow" --durations=5

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Main job: detect on generated images with the best available backend (CKPT=path to use real weights).
demo: venv
	$(PY) -m anchordetr_trt.cli demo --out $(OUT)/demo $(if $(CKPT),--ckpt $(CKPT),)

# The 800x800 side-by-side report, on a CUDA GPU with each part's TFLOP/s (--parts) and then the
# cold-stream benchmark (stream.json); without one, a smoke run of the harness (the CLI refuses CPU
# figures unless asked for them with --device cpu).
bench: venv
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) -m anchordetr_trt.cli bench --out $(OUT)/bench --parts && \
		$(PY) -m anchordetr_trt.bench.stream --out $(OUT)/bench --commit "$$(git rev-parse --short HEAD 2>/dev/null)"; \
	else $(PY) -m anchordetr_trt.cli bench --out $(OUT)/bench --device cpu --variant r50-c5 --size 320 --batch 1 \
			--warmup 1 --iters 3 && \
		echo "make bench: no CUDA GPU here: a smoke run of the harness at 320x320, no per-part figures, no cold-stream benchmark"; fi

bench-ops: venv
	$(PY) -m scripts.bench_ops --out $(OUT)/bench_ops

# Everything that needs the GPU, in one call (the device machine has torch preinstalled: no venv there);
# writes a result set as results/<gpu>/ holds it (scripts/gpu.sh says how to update results/).
gpu:
	bash scripts/gpu.sh

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache

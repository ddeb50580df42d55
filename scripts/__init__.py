"""The GPU machine's tools, run from the repository root as modules (``python -m scripts.<name>``;
``scripts/gpu.sh``, ``make gpu``, runs them all): ``bench_ops`` (each fused kernel against the PyTorch
it replaces), ``gpu_parity`` (eager fp32 against the best compiled backend on a synthetic set),
``train_synthetic`` (a detector trained on the synthetic set) and ``gpu_accuracy`` (that detector
scored in each precision and backend)."""

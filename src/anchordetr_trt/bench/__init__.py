"""The benchmarks: application layer, above the library (nothing in the library imports it).

- ``configs``: what is measured (``BenchConfig``, the baselines, ``default_configs``);
- ``timing``: how a call is timed and profiled;
- ``latency``: ``run_benchmark``, every config measured in this process;
- ``flops``: the model's FLOPs per image by part, and the device's peak FLOP rate on a matmul;
- ``parts``: the model split into backbone, encoder and decoder, each timed on its own;
- ``startup``: a second process's time to its first output on the warm cache
  (``python -m anchordetr_trt.bench.startup SPEC_JSON``);
- ``report``: speedups, the fastest backend, FLOP rates, the acceptance bars, the table, ``save_benchmark``;
- ``plot``: the PNG (matplotlib, the ``plot`` extra: imported only when plotting);
- ``stream``: the cold-stream benchmark (``python -m anchordetr_trt.bench.stream --out DIR``).
"""

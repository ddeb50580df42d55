"""The benchmarks: application layer, above the library (nothing in the library imports it).

- ``configs``: what is measured (``BenchConfig``, the baselines, ``default_configs``);
- ``timing``: how a call is timed and profiled;
- ``latency``: ``run_benchmark``, every config measured in this process;
- ``startup``: a second process's time to its first output on the warm cache
  (``python -m anchordetr_trt.bench.startup SPEC_JSON``);
- ``report``: speedups, the fastest backend, the acceptance targets, the table, ``save_benchmark``;
- ``plot``: the PNG (matplotlib, the ``plot`` extra: imported only when plotting);
- ``stream``: the cold-stream benchmark (``python -m anchordetr_trt.bench.stream --out DIR``).
"""

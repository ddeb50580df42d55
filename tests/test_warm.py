"""The custom kernels' warm-up in ``compile()`` (``backends.warm``): which tasks run, in which stage,
and how the stages run on threads. The builds themselves run on the GPU (``make gpu``:
``test_inductor_fp16_matches_eager_fp32`` checks that no variant compiles after ``compile()``)."""

import threading
import time
import types

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt.backends import warm
from anchordetr_trt.custom_ops import rcda_aggregate, self_attention
from anchordetr_trt.spec import CompileSpec

CPU = torch.device("cpu")


@pytest.fixture
def recorded(monkeypatch):
    """The warm-up's tasks, recorded as (name, argument, start, end) instead of run."""
    calls = []
    lock = threading.Lock()

    def recorder(name):
        def record(*args, **_):
            start = time.perf_counter()
            time.sleep(0.02)  # long enough for tasks of one stage to overlap on threads
            with lock:
                calls.append(
                    (name, args[2] if name == "transformer" else args[0], start, time.perf_counter())
                )

        return record

    monkeypatch.setattr(warm, "_run_transformer", recorder("transformer"))
    monkeypatch.setattr(rcda_aggregate, "warm", recorder("rcda_aggregate"))
    monkeypatch.setattr(self_attention, "warm", recorder("self_attention"))
    return calls


@pytest.mark.parametrize("variant", ["r50-dc5", "r50-c5"])
def test_warm_stages_cover_every_variant_size_after_the_first_sizes_run(recorded, variant):
    """Every variant size's transformer, rcda_aggregate at every such width and self_attention run once;
    the first size's transformer (the first launch of every kernel) ends before any other task starts."""
    config = at.VARIANTS[variant]
    model = types.SimpleNamespace(config=config)
    spec = CompileSpec("fp32", CPU)
    sizes = warm.variant_sizes(spec, config.stride, config.hidden_dim)
    assert len(sizes) > 1
    warm.run_stages(warm.warm_stages(model, spec), CPU, workers=4)
    by_name = {name: [arg for n, arg, *_ in recorded if n == name] for name in {n for n, *_ in recorded}}
    assert sorted(by_name["transformer"]) == sorted(sizes)
    assert sorted(by_name["rcda_aggregate"]) == sorted(width for _, width in sizes)
    assert by_name["self_attention"] == [config.num_heads]
    (first_end,) = [end for name, arg, _, end in recorded if name == "transformer" and arg == sizes[0]]
    assert (
        min(start for name, arg, start, _ in recorded if (name, arg) != ("transformer", sizes[0]))
        >= first_end
    )


def test_run_stages_runs_a_stage_on_threads_without_gradients_on_the_device():
    """Tasks of one stage overlap on worker threads, each without gradients (a per-thread setting)."""
    seen = []
    lock = threading.Lock()

    def task():
        start = time.perf_counter()
        time.sleep(0.05)
        with lock:
            seen.append(
                (threading.current_thread().name, torch.is_grad_enabled(), start, time.perf_counter())
            )

    warm.run_stages([[task] * 3], CPU, workers=3)
    assert len(seen) == 3
    assert len({name for name, *_ in seen}) == 3
    assert threading.main_thread().name not in {name for name, *_ in seen}
    assert not any(grad for _, grad, *_ in seen)
    assert max(start for *_, start, _ in seen) < min(end for *_, end in seen)  # they overlapped


def test_run_stages_with_one_worker_runs_in_the_calling_thread_in_order():
    order = []
    warm.run_stages(
        [
            [lambda: order.append((1, threading.current_thread()))],
            [lambda: order.append((2, threading.current_thread()))],
        ],
        CPU,
        workers=1,
    )
    assert order == [(1, threading.current_thread()), (2, threading.current_thread())]


@pytest.mark.parametrize("workers", [1, 3])
def test_run_stages_raises_a_failed_task_and_starts_no_later_stage(workers):
    later = []

    def fail():
        raise RuntimeError("kernel build failed")

    with pytest.raises(RuntimeError, match="kernel build failed"):
        warm.run_stages([[lambda: time.sleep(0.01), fail], [lambda: later.append(1)]], CPU, workers=workers)
    assert later == []

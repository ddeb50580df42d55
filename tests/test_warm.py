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
def test_warm_stages_cover_every_variant_and_no_two_concurrent_tasks_share_a_build(recorded, variant):
    """Every variant size's transformer, rcda_aggregate at one width of each width class and
    self_attention run once. The first size's transformer (every kernel's first launch) ends before
    any other task starts; the two ops' builds, one task per width class (a stage of its own), end
    before the other sizes' transformer, which runs them in one task."""
    config = at.VARIANTS[variant]
    model = types.SimpleNamespace(config=config)
    spec = CompileSpec("fp32", CPU)
    stages, sizes = warm.warm_stages(model, spec)
    assert sizes == warm.variant_sizes(spec, config.stride, config.hidden_dim) and len(sizes) > 1
    warm.run_stages(stages, CPU, workers=4)
    transformer = sorted((start, end, arg) for name, arg, start, end in recorded if name == "transformer")
    assert [arg for *_, arg in transformer] == [sizes[:1], sizes[1:]]
    builds = [(name, arg, start, end) for name, arg, start, end in recorded if name != "transformer"]
    classes = [rcda_aggregate.width_blocks(arg) for name, arg, *_ in builds if name == "rcda_aggregate"]
    assert sorted(classes) == sorted({rcda_aggregate.width_blocks(width) for _, width in sizes})
    assert [arg for name, arg, *_ in builds if name == "self_attention"] == [config.num_heads]
    assert min(start for _, _, start, _ in builds) >= transformer[0][1]
    assert max(end for *_, end in builds) <= transformer[1][0]


def test_the_warm_up_runs_on_the_callers_gpu(monkeypatch):
    """A spec's "cuda" is resolved in the calling thread: a worker thread's current GPU is GPU 0."""
    used = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(warm, "warm_stages", lambda model, spec: ([], [(50, 50)]))
    monkeypatch.setattr(warm, "run_stages", lambda stages, device, workers: used.append(device))
    spec = types.SimpleNamespace(device=torch.device("cuda"))
    warm.warm_kernels(types.SimpleNamespace(), spec)
    assert used == [torch.device("cuda", 1)]
    spec = types.SimpleNamespace(device=torch.device("cuda", 2))
    warm.warm_kernels(types.SimpleNamespace(), spec)
    assert used[-1] == torch.device("cuda", 2)


def test_run_stages_runs_a_stage_on_threads_without_gradients():
    """Tasks of one stage run at once on worker threads (each waits for the others at a barrier),
    each without gradients (a per-thread setting)."""
    seen = []
    barrier = threading.Barrier(3, timeout=30)

    def task():
        barrier.wait()  # raises BrokenBarrierError unless all three run at once
        seen.append((threading.current_thread().name, torch.is_grad_enabled()))

    warm.run_stages([[task] * 3], CPU, workers=3)
    assert len({name for name, _ in seen}) == 3
    assert threading.main_thread().name not in {name for name, _ in seen}
    assert not any(grad for _, grad in seen)


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


def test_sizes_of_one_width_class_share_one_rcda_aggregate_task(recorded, monkeypatch):
    """Two widths of one class (``width_blocks``) make the same builds: one task builds them."""
    sizes = [(30, 40), (40, 48), (20, 20)]
    assert (
        rcda_aggregate.width_blocks(40) == rcda_aggregate.width_blocks(48) != rcda_aggregate.width_blocks(20)
    )
    monkeypatch.setattr(warm, "variant_sizes", lambda *_: sizes)
    stages, _ = warm.warm_stages(
        types.SimpleNamespace(config=at.VARIANTS["r50-dc5"]), CompileSpec("fp32", CPU)
    )
    warm.run_stages(stages, CPU, workers=4)
    widths = [arg for name, arg, *_ in recorded if name == "rcda_aggregate"]
    assert sorted(rcda_aggregate.width_blocks(width) for width in widths) == sorted(
        {rcda_aggregate.width_blocks(40), rcda_aggregate.width_blocks(20)}
    )


@pytest.mark.parametrize("affinity", [True, False])
def test_the_default_workers_are_the_usable_cpus_at_most_one_per_task(monkeypatch, affinity):
    """One worker per CPU the process may use (all CPUs where the OS does not say), at most one per task."""
    if affinity:
        monkeypatch.setattr(warm.os, "sched_getaffinity", lambda _: {0, 1, 2}, raising=False)
    else:
        monkeypatch.delattr(warm.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(warm.os, "cpu_count", lambda: 5)
    names = set()
    lock = threading.Lock()

    def task():
        time.sleep(0.05)
        with lock:
            names.add(threading.current_thread().name)

    warm.run_stages([[task] * 8], CPU)
    assert 1 < len(names) <= (3 if affinity else 5)
    names.clear()
    warm.run_stages([[task]], CPU)  # one task: run in this thread
    assert names == {threading.current_thread().name}

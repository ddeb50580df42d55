"""compile(): backend choice, precision and shape-range checks, and (on a GPU) parity with eager fp32."""

import copy
import dataclasses
import functools
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from official import fixture_state_dict

import anchordetr_trt as at
from anchordetr_trt.backends import inductor, warm
from anchordetr_trt.backends.inductor import InductorRunner, prepare
from anchordetr_trt.backends.inductor_rewrites import (
    HalfProductLinear,
    precompute_queries,
    rewrite_for_inductor,
)
from anchordetr_trt.bench.parts import compile_part
from anchordetr_trt.compiled import pad_to_multiple
from anchordetr_trt.custom_ops import _common, fused
from anchordetr_trt.export import example_inputs
from anchordetr_trt.fold import fold_frozen_batchnorm
from anchordetr_trt.spec import CompileSpec
from anchordetr_trt.testing import assert_detections_close


@pytest.fixture(scope="module")
def dc5_weights():
    return {"model": fixture_state_dict("r50-dc5")}


@pytest.mark.slow
def test_eager_fp32_on_cpu_equals_load_model(dc5_weights):
    compiled = at.compile(
        dc5_weights, variant="r50-dc5", backend="eager", device="cpu", precision="fp32", min_shape=(1, 64, 64)
    )
    reference = at.load_model(dc5_weights, variant="r50-dc5")
    images, mask = example_inputs((2, 96, 160))
    with torch.no_grad():
        expected = reference(images, mask)
    got = compiled(images, mask)
    assert compiled.backend == "eager" and compiled.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.slow
def test_images_smaller_than_min_shape_are_padded_up_to_it(dc5_weights):
    """A panorama resized to a short side under min_shape runs as if padded in a batch (masked pixels)."""
    compiled = at.compile(
        dc5_weights, variant="r50-dc5", backend="eager", device="cpu", min_shape=(1, 96, 96)
    )
    reference = at.load_model(dc5_weights, variant="r50-dc5")
    images, mask = example_inputs((1, 64, 160))
    padded = torch.zeros(1, 3, 96, 160), torch.ones(1, 96, 160, dtype=torch.bool)
    padded[0][..., :64, :], padded[1][:, :64] = images, mask
    with torch.no_grad():
        expected, unpadded = reference(*padded), reference(images, mask)
    got = compiled(images, mask)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not torch.allclose(got["pred_boxes"], unpadded["pred_boxes"])  # the padding is real
    with pytest.raises(at.InputError, match=r"\(1, 64, 1400\) is outside the compiled range"):
        compiled(*example_inputs((1, 64, 1400)))  # larger than max_shape is still refused, as passed


@pytest.mark.slow
def test_the_wrapper_casts_inputs_refuses_larger_batches_and_leaves_the_users_model_alone():
    model = at.build_model(at.VARIANTS["r50-c5"]).eval()
    fused_ops = lambda: [m.fused_ops for m in model.modules() if hasattr(m, "fused_ops")]
    before, fused = copy.deepcopy(model.state_dict()), fused_ops()
    compiled = at.compile(
        model, device="cpu", min_shape=(1, 32, 32), opt_shape=(1, 64, 64), max_shape=(1, 64, 64)
    )
    images, mask = example_inputs((1, 64, 64))
    got = compiled(images.double(), mask)
    with torch.no_grad():
        expected = model(images, mask)
    assert got["pred_logits"].dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(at.InputError, match="outside the compiled range"):
        compiled(*example_inputs((2, 64, 64)))
    assert compiled.runner is not model and fused_ops() == fused
    torch.testing.assert_close(model.state_dict(), before, atol=0, rtol=0)
    with pytest.raises(at.InputError, match=r"every pixel of image 0 as padding .*~mask"):
        compiled(images, torch.ones_like(mask))  # True = valid pixel: the other convention


def test_defaults_on_cpu_are_eager_fp32():
    model = at.build_model(at.VARIANTS["r50-c5"])
    compiled = at.compile(model, device="cpu")
    assert compiled.backend == "eager" and compiled.precision == "fp32"


def test_the_backend_casts_with_set_precision(monkeypatch):
    # The one precision rule (anchors and heads float32); the GPU test checks inductor's model.
    casts = []
    original = at.AnchorDETR.set_precision
    monkeypatch.setattr(
        at.AnchorDETR, "set_precision", lambda model, dtype: casts.append(dtype) or original(model, dtype)
    )
    at.compile(at.build_model(at.VARIANTS["r50-c5"]), device="cpu")
    assert casts == [torch.float32]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"backend": "tensorrt", "device": "cpu", "precision": "fp32"},
            at.BackendUnavailableError,
            "backend='eager'",
        ),
        (
            {"backend": "inductor", "device": "cpu", "precision": "fp32"},
            at.BackendUnavailableError,
            "needs a CUDA",
        ),
        (
            {"backend": "eager", "device": "cpu", "precision": "fp16"},
            at.BackendUnavailableError,
            "precision='fp32'",
        ),
        ({"backend": "onnx"}, ValueError, "unknown backend"),
        ({"precision": "int8"}, ValueError, "unknown precision"),
        ({"min_shape": (1, 800, 800), "opt_shape": (1, 640, 640)}, at.InputError, "min <= opt <= max"),
        ({"cache_dir": 5}, at.InputError, "cache_dir must be a folder path .* got int 5"),
    ],
)
def test_bad_requests_are_explained(kwargs, error, message):
    model = at.build_model(at.VARIANTS["r50-c5"])
    with pytest.raises(error, match=message):
        at.compile(model, **kwargs)


@pytest.mark.no_gpu
def test_cuda_without_gpu_is_explained():
    with pytest.raises(at.BackendUnavailableError, match="no CUDA GPU"):
        at.compile(at.build_model(at.VARIANTS["r50-c5"]), device="cuda")


def _keep_graph(graphs: list) -> Callable:
    """A Dynamo backend that appends the graph to ``graphs`` and runs it as it is (no GPU here)."""
    from torch._dynamo.aot_compile_types import GraphModuleSerializableCallable

    def keep_graph(graph_module, example_inputs):
        graphs.append(graph_module)
        return GraphModuleSerializableCallable(graph_module)

    return keep_graph


@pytest.mark.slow
def test_inductor_build_times_its_phases(monkeypatch):
    # build() on the CPU: Dynamo's trace kept as it is (no Inductor), no CUDA graphs, no Triton kernels
    # to warm. What stream.json reports of a cold compile() comes from these.
    monkeypatch.setattr(
        inductor, "InductorRunner", functools.partial(InductorRunner, max_graphs=0, compiler=_keep_graph([]))
    )
    config = dataclasses.replace(at.VARIANTS["r50-c5"], num_encoder_layers=1, num_decoder_layers=1)
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (2, 96, 96))
    runner = inductor.build(fold_frozen_batchnorm(at.build_model(config)), spec)
    assert runner.compiles == 1
    assert runner.model.transformer.precomputed_queries is not None  # read by the function, not computed
    assert list(runner.build_seconds) == [
        "load",
        "trace_and_compile",
        "first_call",
        "warm_kernels",
        "capture",
    ]
    assert runner.build_seconds["trace_and_compile"] == max(runner.build_seconds.values())


@pytest.mark.slow
def test_inductor_traces_one_graph_for_batch_one_and_larger_batches():
    # The Dynamo graph the inductor backend compiles, counted without compiling it (no GPU here), first
    # traced at the range's largest batch as build() does: batch 1, other batches and every block count
    # share it. Convolutions and F.group_norm guard batch > 1 when traced by torch 2.11 (measured on
    # the GPU machine), so none may be left. What this cannot see: guards Inductor adds while lowering
    # (the next test lowers a smaller model), and the Triton ops' fakes (reference ops here: the
    # fused ones would run their kernels in Triton's interpreter, minutes for a whole model).
    model = _rewritten_model()
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 320, 320), (1, 320, 320), (4, 416, 416))
    graphs = []
    runner = InductorRunner(model, spec, max_graphs=0, compiler=_keep_graph(graphs))
    for shape in [(4, 320, 352), (1, 384, 320), (2, 416, 416)]:
        images, mask = example_inputs(shape)
        out = runner(images, mask)
        assert out["pred_logits"].shape == (shape[0], 900, 91)
    assert len(graphs) == 1 and runner.compiles == 1
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    guarding = {str(op) for op in (torch.conv2d, F.conv2d, F.group_norm, torch.group_norm)}
    assert not guarding.intersection(targets)
    # Every convolution through the cuDNN ops: ResNet-50's stem, 48 and 4 shortcuts, and the projection.
    assert sum(target.startswith("anchordetr_cudnn.") for target in targets) == 54
    # Each FFN's first linear layer and ReLU as one call (6 encoder and 6 decoder layers).
    assert targets.count(str(torch._addmm_activation)) == 12


@pytest.mark.slow
def test_inductors_lowering_guards_nothing_that_splits_the_range():
    # Inductor itself (its C++ kernels on the CPU), not only the trace above: lowering a graph can add
    # guards too, as the GPU test below found after the fact. The custom ops stay opaque, as on the GPU.
    # It fails on a packed query-key projection split by unbind, which makes Inductor guard batch > 1
    # (torch 2.11 to 2.14, and on the GPU). Two layers of each: the memory's keys are projected for
    # several layers at once, and rcda_aggregate takes the position terms as slices of one GEMM's
    # output (``project_each``), per image in the encoder (with one layer a term is the whole output,
    # and a batch guard on slices of it goes unseen).
    config = dataclasses.replace(at.VARIANTS["r50-c5"], num_encoder_layers=2, num_decoder_layers=2)
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (3, 96, 96))
    model = prepare(fold_frozen_batchnorm(at.build_model(config)), spec)
    runner = InductorRunner(model, spec, max_graphs=0)
    for shape in [(3, 96, 64), (1, 64, 96), (2, 96, 96)]:
        images, mask = example_inputs(shape)
        with torch.no_grad():
            expected = model(images, mask)
        got = runner(images, mask)
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    assert runner.compiles == 1 and len(runner.functions) == 1


@pytest.fixture
def unregistered_ops():
    """Inductor's tables of lowerings and fallbacks without the package's ops, as in a process that
    has compiled nothing yet; restored afterwards."""
    from torch._inductor import lowering

    tables = lowering.lowerings, lowering._maybe_layout_constraints
    sets = lowering.fallbacks, lowering.needs_realized_inputs
    saved_tables, saved_sets = [dict(table) for table in tables], [list(each) for each in sets]
    ops = _registered_package_ops()
    for table in tables:
        for op in ops:
            table.pop(op, None)
    for each in sets:
        for op in ops:
            each.discard(op)
    yield
    for table, contents in zip(tables, saved_tables, strict=True):
        table.clear()
        table.update(contents)
    for each, contents in zip(sets, saved_sets, strict=True):
        each.clear()
        each.update(contents)


@pytest.mark.slow
def test_inductor_compiles_the_package_ops_as_registered_fallbacks(unregistered_ops):
    """An op Inductor has no lowering for becomes an implicit fallback at its first node, after a log
    message of that node's inputs, which torch 2.11 formats even with the log off and which grows
    exponentially with the graph upstream (a compile of the model stuck there for minutes on a GPU).
    The backend registers its ops first: no such message, and each op keeps the layout constraint
    the implicit path would give it. The log is on here (torch 2.14 formats it only then)."""
    from torch._inductor import lowering
    from torch._library.utils import get_layout_constraint_tag

    config = dataclasses.replace(at.VARIANTS["r50-c5"], num_encoder_layers=1, num_decoder_layers=2)
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    model = prepare(fold_frozen_batchnorm(at.build_model(config)), spec)
    runner = InductorRunner(model, spec, max_graphs=0)
    messages = []  # the records' unformatted messages: a regression's arguments are never printed
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.msg)
    graph_log = logging.getLogger("torch._inductor.graph")
    level = graph_log.level
    graph_log.addHandler(handler)
    graph_log.setLevel(logging.INFO)
    try:
        images, mask = example_inputs((1, 64, 64))
        with torch.no_grad():
            expected = model(images, mask)
        with torch._inductor.utils.fresh_cache():  # lowered here, not loaded from an earlier run
            got = runner(images, mask)
    finally:
        graph_log.removeHandler(handler)
        graph_log.setLevel(level)
    assert not [message for message in messages if "implicit fallback" in str(message)]
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    ops = _registered_package_ops()
    assert {op.namespace for op in ops} == {"anchordetr", "anchordetr_cudnn", "anchordetr_inductor"}
    for op in ops:
        implicit = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
        assert lowering.maybe_layout_constraints(op) is implicit, op


def test_parts_are_compiled_with_the_package_ops_registered(unregistered_ops):
    """The benchmark's parts compile as the backend does: the ops registered first (their graphs,
    too, can meet an op first deep in the decoder)."""
    assert not _registered_package_ops()
    compile_part(torch.nn.Identity())
    assert set(_registered_package_ops()) == set(inductor.package_ops())


def _registered_package_ops() -> list[torch._ops.OpOverload]:
    """The package's ops among Inductor's lowerings."""
    from torch._inductor import lowering

    return [
        op
        for op in lowering.lowerings
        if isinstance(op, torch._ops.OpOverload) and inductor.is_package_namespace(op.namespace)
    ]


def _rewritten_model():
    """The backend's model (``prepare``) of r50-c5, fp32 on the CPU, with the reference ops."""
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    return prepare(fold_frozen_batchnorm(at.build_model(at.VARIANTS["r50-c5"])), spec, fused_ops=False)


@pytest.fixture(scope="module")
def saved_range(tmp_path_factory):
    """A runner's range compiled and saved in a cache_dir: (model, spec, shapes, outputs at shapes)."""
    model, shapes = _rewritten_model(), [(2, 352, 320), (1, 320, 384)]
    spec = CompileSpec(
        "fp32",
        torch.device("cpu"),
        (1, 320, 320),
        (1, 320, 320),
        (2, 384, 384),
        tmp_path_factory.mktemp("cache"),
    )
    first = InductorRunner(model, spec, max_graphs=0, compiler=_keep_graph([]))
    assert not first.load()
    outputs = [first(*example_inputs(shape)) for shape in shapes]
    assert first.compiles == 1 and len(list((spec.cache_dir / "precompiled").iterdir())) == 1
    return model, spec, shapes, outputs


def _loaded_runner(model, spec) -> InductorRunner:
    runner = InductorRunner(model, spec, max_graphs=0, compiler=_keep_graph([]))
    assert runner.load()
    return runner


@pytest.mark.slow
def test_a_second_runner_loads_the_saved_range_and_reads_the_weights_of_its_model(saved_range):
    # What a second process does with a warm cache_dir: load the function (no trace) and run it on
    # this model's weights, which the file does not hold.
    model, spec, shapes, outputs = saved_range
    second = _loaded_runner(model, spec)
    for shape, expected in zip(shapes, outputs, strict=True):
        torch.testing.assert_close(second(*example_inputs(shape)), expected, rtol=0, atol=0)
    assert second.compiles == 0

    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other_weights.parameters():
            parameter.mul_(1.05)
    precompute_queries(other_weights)  # the decoder's queries, inputs of the function as the weights are
    queries = (model.transformer.precomputed_queries, other_weights.transformer.precomputed_queries)
    for name in ("tgt", "self_terms_0"):  # a function that baked them in would fail below
        assert not torch.equal(getattr(queries[0], name), getattr(queries[1], name))
    third = _loaded_runner(other_weights, spec)
    images, mask = example_inputs(shapes[0])
    out = third(images, mask)
    torch.testing.assert_close(out, other_weights(images, mask), rtol=1e-4, atol=1e-4)
    assert third.compiles == 0 and not torch.allclose(out["pred_boxes"], outputs[0]["pred_boxes"])


@pytest.mark.slow
def test_inputs_the_saved_range_rejects_get_a_function_of_their_own(saved_range, caplog):
    # Batch 3 is beyond the range (compile() refuses it before the runner sees it): it stands for
    # inputs the guards reject, which get a function for their shape and a warning, not an error.
    model, spec, _, _ = saved_range
    runner, saved = _loaded_runner(model, spec), sorted((spec.cache_dir / "precompiled").iterdir())
    beyond = example_inputs((3, 320, 320))
    torch.testing.assert_close(runner(*beyond), model(*beyond), rtol=1e-4, atol=1e-4)
    assert runner.compiles == 1 and len(runner.functions) == 2 and "compiling a function for" in caplog.text
    assert sorted((spec.cache_dir / "precompiled").iterdir()) == saved  # a shape's function is not saved


def test_inputs_no_function_accepts_run_uncompiled_past_the_limit(saved_range, monkeypatch, caplog):
    model, spec, _, _ = saved_range
    monkeypatch.setattr(inductor, "MAX_FUNCTIONS", 1)
    runner = _loaded_runner(model, spec)
    beyond = example_inputs((3, 320, 320))
    torch.testing.assert_close(runner(*beyond), model(*beyond), rtol=1e-4, atol=1e-4)
    assert runner.compiles == 0 and "running the model uncompiled" in caplog.text


@pytest.mark.slow
def test_changed_global_settings_compile_the_range_again_under_another_name(saved_range, caplog):
    # Dynamo guards global settings (here torch's thread count, which torchrun sets to 1): a function
    # compiled under others rejects every input, so the range is compiled again, once, and saved apart.
    model, spec, shapes, outputs = saved_range
    runner, saved = _loaded_runner(model, spec), len(list((spec.cache_dir / "precompiled").iterdir()))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        for shape, expected in zip(shapes, outputs, strict=True):  # other threads, other rounding
            torch.testing.assert_close(runner(*example_inputs(shape)), expected, rtol=1e-5, atol=1e-5)
        assert runner.compiles == 1 and "compiling a function for" not in caplog.text
        assert len(list((spec.cache_dir / "precompiled").iterdir())) == saved + 1
        assert _loaded_runner(model, spec).compiles == 0
    finally:
        torch.set_num_threads(threads)


def test_the_saved_file_is_named_by_range_and_configuration(saved_range):
    model, spec, _, _ = saved_range
    name = _saved_path(model, spec).name
    other_range = CompileSpec(
        "fp32", torch.device("cpu"), (1, 320, 320), (1, 320, 320), (2, 416, 416), spec.cache_dir
    )
    assert _saved_path(model, other_range).name != name
    assert not InductorRunner(model, other_range, compiler=_keep_graph([])).load()
    dc5 = rewrite_for_inductor(fold_frozen_batchnorm(at.build_model(at.VARIANTS["r50-dc5"]).eval()))
    assert _saved_path(dc5, spec).name != name
    assert not InductorRunner(dc5, spec, compiler=_keep_graph([])).load()


def test_the_saved_file_is_named_by_inductors_settings(saved_range):
    """A function Inductor compiled under other settings (torch._inductor.config) is not loaded."""
    model, spec, _, _ = saved_range
    runner = InductorRunner(model, spec)
    name = runner._saved_path(inductor._global_state()).name
    with torch._inductor.config.patch(combo_kernels=not torch._inductor.config.combo_kernels):
        assert runner._saved_path(inductor._global_state()).name != name
    assert runner._saved_path(inductor._global_state()).name == name


def _saved_path(model, spec) -> Path:
    return InductorRunner(model, spec, compiler=_keep_graph([]))._saved_path(inductor._global_state())


@pytest.mark.slow
def test_a_damaged_saved_file_is_compiled_again_and_replaced(saved_range, tmp_path, caplog):
    model, spec, shapes, outputs = saved_range
    shutil.copytree(spec.cache_dir / "precompiled", tmp_path / "precompiled")
    spec = dataclasses.replace(spec, cache_dir=tmp_path)
    saved = _saved_path(model, spec)
    saved.write_bytes(saved.read_bytes()[:1000])
    damaged = InductorRunner(model, spec, max_graphs=0, compiler=_keep_graph([]))
    assert not damaged.load() and "compiling instead" in caplog.text
    torch.testing.assert_close(damaged(*example_inputs(shapes[0])), outputs[0], rtol=0, atol=0)
    assert damaged.compiles == 1 and _loaded_runner(model, spec).compiles == 0


@pytest.mark.parametrize(
    ("min_shape", "max_shape"), [((1, 320, 320), (8, 1344, 1344)), ((1, 64, 800), (2, 256, 832))]
)
@pytest.mark.parametrize("stride", [16, 32])
def test_feature_sizes_take_every_height_and_width_of_the_range(min_shape, max_shape, stride):
    spec = CompileSpec(
        precision="fp32",
        device=torch.device("cpu"),
        min_shape=min_shape,
        opt_shape=min_shape,
        max_shape=max_shape,
    )
    sizes = warm.feature_sizes(spec, stride)
    (_, low_h, low_w), _, (_, high_h, high_w) = spec.padded_range
    assert {h for h, _ in sizes} == {size // stride for size in range(low_h, high_h + 1, 32)}
    assert {w for _, w in sizes} == {size // stride for size in range(low_w, high_w + 1, 32)}
    assert len(sizes) == max(high_h - low_h, high_w - low_w) // 32 + 1


def test_pad_to_multiple_pads_bottom_right_as_masked_pixels():
    images, mask = example_inputs((2, 70, 100))
    padded_images, padded_mask = pad_to_multiple(images, mask)
    assert padded_images.shape == (2, 3, 96, 128) and padded_mask.shape == (2, 96, 128)
    assert torch.equal(padded_images[:, :, :70, :100], images) and torch.equal(
        padded_mask[:, :70, :100], mask
    )
    assert not padded_images[:, :, 70:].any() and not padded_images[..., 100:].any()
    assert padded_mask[:, 70:].all() and padded_mask[..., 100:].all()
    on_grid = example_inputs((1, 64, 96))
    assert all(a is b for a, b in zip(pad_to_multiple(*on_grid), on_grid, strict=True))


def _check_calls_take_turns(compiled, shape) -> None:
    """Two batches of ``shape`` (captured by now: the graphs' static inputs are shared), each called
    on its own CUDA stream with the first stream still busy, and from two threads: every call gets its
    own batch's outputs."""
    images, mask = example_inputs(shape, "cuda")
    other_mask = mask.clone()
    other_mask[:, :, shape[2] // 2 :] = True  # half of every image padding: other outputs
    batches = [(images, mask), (images.flip(-1), other_mask)]
    expected = [compiled(*batch) for batch in batches]
    atol = 1e-3  # a replay of one graph on the same inputs; far below the batches' difference
    assert (expected[0]["pred_logits"] - expected[1]["pred_logits"]).abs().max() > 20 * atol
    busy, streams = (
        torch.randn(8192, 8192, device="cuda", dtype=torch.float16),
        [torch.cuda.Stream() for _ in range(2)],
    )
    torch.cuda.synchronize()  # the inputs ready for the other streams
    with torch.cuda.stream(streams[0]):
        for _ in range(20):  # some ms of work ahead of the first call on its stream
            busy = busy @ busy / 8192
        first = compiled(*batches[0])
    with torch.cuda.stream(streams[1]):
        second = compiled(*batches[1])
    torch.cuda.synchronize()
    for got, want in zip((first, second), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=atol)

    results: dict[int, list] = {}

    def calls(index: int) -> None:
        results[index] = [compiled(*batches[index]) for _ in range(20)]
        torch.cuda.synchronize()

    threads = [threading.Thread(target=calls, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, want in enumerate(expected):
        for got in results[index]:
            torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("compiler", [None, "keep"])
def test_the_range_is_compiled_under_the_backends_inductor_settings(monkeypatch, compiler):
    """Inductor compiles the range under INDUCTOR_OPTIONS (measured faster in
    docs/transformer_performance.md); another compiler gets none of them. torch.compile stands in:
    what it is given is the point, not a compile of the model."""
    seen = []

    class Stop(Exception):
        pass

    def fake_compile(function, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(torch, "compile", fake_compile)
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    runner = InductorRunner(torch.nn.Identity(), spec, max_graphs=0, compiler=compiler and _keep_graph([]))
    with pytest.raises(Stop):
        runner._compile(*inductor.unfold(*example_inputs((1, 64, 64))), symbolic=False)
    options = seen[0]["options"]
    assert options.pop("guard_filter_fn") is inductor._saved_guards
    assert options == ({} if compiler else inductor.INDUCTOR_OPTIONS) and inductor.INDUCTOR_OPTIONS


def test_inductor_calls_hold_the_runners_lock(monkeypatch):
    """The runner's calls take turns (its captured graphs share static inputs): a call runs holding
    the lock (the GPU test above calls from two threads and two streams)."""
    model = _rewritten_model()
    spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 64, 64))
    runner = InductorRunner(model, spec, max_graphs=0, compiler=_keep_graph([]))
    held = []
    monkeypatch.setattr(runner, "_call_padded", lambda images, mask: held.append(runner._lock.locked()))
    runner(*example_inputs((1, 64, 64)))
    assert held == [True] and not runner._lock.locked()


def test_a_failed_capture_runs_that_shape_uncaptured_and_keeps_the_other_graphs(monkeypatch, caplog):
    """A capture that fails (out of memory, say), in the graph or in the first allocation of the
    graphs' shared inputs, warns once; the shape then runs uncaptured, with no capture tried again,
    and the graph it would have replaced is kept (CUDA graphs replaced by direct calls, the compiled
    function by a stub: no GPU here)."""
    failing, tried, pools = (1, 96, 64), [], []

    class Graph:  # _CapturedGraph's contract: captured at construction, replayed on new inputs
        def __init__(self, fn, shape, pool):
            tried.append(shape)
            if shape == failing:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.fn = fn

        def replay(self, images, mask):
            return self.fn(images, mask)

    def for_range(cls, spec, fail=False):
        pools.append(spec)
        if fail:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    def runner_with(max_graphs: int) -> InductorRunner:
        spec = CompileSpec("fp32", torch.device("cpu"), (1, 64, 64), (1, 64, 64), (1, 96, 96))
        runner = InductorRunner(torch.nn.Identity(), spec, max_graphs=max_graphs, compiler=_keep_graph([]))
        monkeypatch.setattr(runner, "_call_padded", lambda images, mask: {"pred_logits": images.mean((1, 2))})
        return runner

    def warnings() -> list[str]:
        return [r.message.split(";")[0] for r in caplog.records if "cannot capture" in r.message]

    monkeypatch.setattr(inductor, "_CapturedGraph", Graph)
    monkeypatch.setattr(inductor._GraphPool, "for_range", classmethod(for_range))
    runner, kept = runner_with(max_graphs=1), (1, 64, 64)
    for _ in range(2):  # seen twice: captured
        runner(*example_inputs(kept))
    inputs = example_inputs(failing)
    expected = runner._call_padded(*inputs)
    with caplog.at_level(logging.WARNING, logger=inductor.__name__):
        outputs = [runner(*inputs) for _ in range(3)]
    assert tried == [kept, failing]  # tried once
    assert list(runner.graphs) == [kept]
    assert warnings() == [
        "inductor: cannot capture a CUDA graph for (1, 96, 64) (OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 2.00 GiB)"
    ]
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

    caplog.clear()
    monkeypatch.setattr(
        inductor._GraphPool, "for_range", classmethod(functools.partial(for_range, fail=True))
    )
    runner, pools[:] = runner_with(max_graphs=1), []
    inputs = example_inputs(kept)
    with caplog.at_level(logging.WARNING, logger=inductor.__name__):
        outputs = [runner(*inputs) for _ in range(3)]
    assert len(pools) == 1 and not runner.graphs
    assert warnings() == [
        "inductor: cannot capture a CUDA graph for (1, 64, 64) (OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 1.00 GiB)"
    ]
    for out in outputs:
        torch.testing.assert_close(out, runner._call_padded(*inputs), rtol=0, atol=0)


@pytest.mark.gpu
def test_inductor_fp16_matches_eager_fp32(dc5_weights, tmp_path, monkeypatch):
    # Both query blocks of rcda_aggregate and self_attention within batches 1 and 2: the grid rule's
    # threshold at 96 programs on this GPU (the decoder's 900 queries, 8 heads: 64 programs of 128
    # queries at batch 1, 128 at batch 2), as an H100 crosses it at batch 5.
    monkeypatch.setattr(
        _common, "PROGRAMS_PER_SM", 96 / torch.cuda.get_device_properties(0).multi_processor_count
    )
    reference = at.load_model(dc5_weights, variant="r50-dc5", device="cuda").set_fused_ops(False)
    options = {
        "variant": "r50-dc5",
        "backend": "inductor",
        "max_shape": (2, 1344, 1344),
        "cache_dir": tmp_path,
    }
    compiled = at.compile(dc5_weights, **options)
    images, mask = example_inputs((1, 800, 800), "cuda")
    mask[:] = False
    with torch.no_grad():
        expected = reference(images, mask)
    # fp16 tolerances (testing.TOLERANCES): logits 0.15, boxes 0.01, and 99% of the top 100
    # (query, class) detections with the same query's box at IoU > 0.9 and the score within 0.02.
    assert_detections_close(compiled(images, mask), expected, precision="fp16")
    heads = compiled.runner.model.transformer  # set_precision: anchors and heads float32
    assert heads.position.weight.dtype == heads.bbox_embed[0].layers[0].weight.dtype == torch.float32
    assert isinstance(heads.class_embed[0], HalfProductLinear)  # products on float16 tensor cores

    # Varied sizes within the range, heavy padding: no compile after compile(), not even of a Triton
    # kernel variant (feature maps 40x68 and 50x48 need rcda_aggregate's 64 + 16 and 32 + 16 column
    # blocks, which the 50x50 of 800x800 does not), all finite.
    compiles, variants = compiled.runner.compiles, fused.compiled_variants()
    for shape in [(2, 640, 1088), (1, 800, 768)]:
        images, mask = example_inputs(shape, "cuda")
        mask[0, shape[1] // 3 :] = True
        out = compiled(images, mask)
        assert out["pred_logits"].shape == (shape[0], 900, 91)
        assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
    assert compiled.runner.compiles == compiles
    assert fused.compiled_variants() == variants
    with pytest.raises(at.InputError, match="outside the compiled range"):
        compiled(*example_inputs((3, 800, 800), "cuda"))

    _check_calls_take_turns(compiled, (2, 640, 1088))

    # A second compile() with the same cache_dir loads the saved function (as a second process does)
    # and computes the same outputs.
    again = at.compile(dc5_weights, **options)
    assert again.runner.loaded and again.runner.compiles == 0
    # build()'s phases, timed in order: a compile traces and runs the range once, a load does neither.
    assert list(compiled.runner.build_seconds) == [
        "load", "trace_and_compile", "first_call", "warm_kernels", "capture"
    ]  # fmt: skip
    assert list(again.runner.build_seconds) == ["load", "warm_kernels", "capture"]
    assert again.runner.build_seconds["load"] < compiled.runner.build_seconds["trace_and_compile"] / 10
    images, mask = example_inputs((2, 640, 1088), "cuda")
    torch.testing.assert_close(again(images, mask), compiled(images, mask), rtol=0, atol=0)
    # The file holds no weights: loaded for a model with other weights (logits moved by 1, beyond the
    # fp16 tolerance of 0.15), it computes that model.
    with torch.no_grad():
        reference.transformer.class_embed[0].bias.add_(1.0)
        expected = reference(images, mask)
    other = at.compile(reference, **options)
    assert other.runner.loaded
    assert_detections_close(other(images, mask), expected, precision="fp16")


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda tmp: tmp / "a_file", "is a file, not a folder: pass a folder path"),
        (lambda tmp: tmp / "a_file" / "cache", "cannot be created"),
    ],
)
def test_cache_dir_that_cannot_be_a_folder_is_an_input_error(tmp_path, make_path, message):
    (tmp_path / "a_file").write_text("user data")
    model = at.build_model(at.VARIANTS["r50-c5"])
    with pytest.raises(at.InputError, match=rf"^cache_dir='.*' {message}"):
        at.compile(model, device="cpu", cache_dir=make_path(tmp_path))
    assert (tmp_path / "a_file").read_text() == "user data"


def test_auto_skips_a_backend_that_cannot_build_the_precision(monkeypatch):
    from anchordetr_trt import backends

    monkeypatch.setattr(backends.tensorrt, "status", lambda device: (True, "as if TensorRT were here"))
    cpu = torch.device("cpu")
    backend, reason = backends.choose_backend("auto", cpu, "bf16")
    assert backend == "eager" and "tensorrt: builds fp16 or fp32 only, not precision='bf16'" in reason
    assert backends.choose_backend("auto", cpu, "fp16")[0] == "tensorrt"
    with pytest.raises(at.BackendUnavailableError, match="not precision='bf16'; use backend='eager'"):
        backends.choose_backend("tensorrt", cpu, "bf16")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps"])
def test_device_names_that_are_not_devices_are_input_errors(device):
    model = at.build_model(at.VARIANTS["r50-c5"])
    with pytest.raises(at.InputError, match=rf"^device='{device}' is not supported"):
        at.compile(model, device=device)


def test_spec_expands_home():
    spec = CompileSpec("fp32", torch.device("cpu"), cache_dir="~/anchordetr_cache")
    assert spec.cache_dir == Path.home() / "anchordetr_cache"


@pytest.mark.parametrize(
    ("min_shape", "max_shape", "opt_shape"),
    [
        ((1, 64, 64), (2, 320, 320), (1, 320, 320)),  # the default opt (1, 800, 800) clamped down
        ((2, 960, 1024), (4, 1344, 1344), (2, 960, 1024)),  # ... and up
        ((1, 320, 320), (8, 1344, 1344), (1, 800, 800)),  # the default range: the default opt
    ],
)
def test_the_default_opt_shape_fits_the_range_it_is_given(min_shape, max_shape, opt_shape):
    spec = CompileSpec("fp32", torch.device("cpu"), min_shape=min_shape, max_shape=max_shape)
    assert spec.opt_shape == opt_shape
    compiled = at.compile(at.build_model(at.VARIANTS["r50-c5"]), min_shape=min_shape, max_shape=max_shape)
    assert compiled.spec.opt_shape == opt_shape


def test_an_explicit_opt_shape_outside_the_range_is_still_refused():
    with pytest.raises(at.InputError, match="min <= opt <= max"):
        CompileSpec(
            "fp32",
            torch.device("cpu"),
            min_shape=(1, 64, 64),
            max_shape=(2, 320, 320),
            opt_shape=(1, 800, 800),
        )

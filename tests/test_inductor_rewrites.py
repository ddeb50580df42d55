"""The Inductor backend's convolution ops: same results as the model's convolutions, and fake
(traced) outputs whose shapes and strides match the real ones at every batch size."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_interpreter
from official import fixture_state_dict
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import anchordetr_trt as at
from anchordetr_trt.backends import inductor
from anchordetr_trt.backends.inductor_rewrites import (
    GroupNorm,
    HalfProductLinear,
    conv,
    conv_bias_add_relu,
    conv_bias_relu,
    precompute_queries,
    rewrite_for_inductor,
    rewrite_heads,
)
from anchordetr_trt.custom_ops import four_channels, reference
from anchordetr_trt.export import example_inputs
from anchordetr_trt.fold import fold_frozen_batchnorm

CONVS = {  # (kernel, stride, padding, dilation) of the ResNet convolutions, the dilated DC5 one included
    "1x1": (1, 1, 0, 1),
    "3x3": (3, 1, 1, 1),
    "3x3 stride 2": (3, 2, 1, 1),
    "3x3 dilated": (3, 1, 2, 2),
    "7x7 stem": (7, 2, 3, 1),
    "1x1 stride 2": (1, 2, 0, 1),
}


def _conv_inputs(batch: int, kernel: int, stride: int, residual: bool):
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 8, 19, 22, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(16, 8, kernel, kernel, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    bias = torch.randn(16, generator=generator)
    out_size = F.conv2d(x, weight, stride=stride, padding=kernel // 2).shape[2:] if residual else None
    extra = [torch.randn(batch, 16, *out_size, generator=generator)] if residual else []
    return x, weight, bias, extra


CASES = [  # ResNet's residual convolutions are 1x1, so the residual op is never dilated
    pytest.param(op, *geometry, id=f"{op._name}-{name}")
    for op in (conv, conv_bias_relu, conv_bias_add_relu)
    for name, geometry in CONVS.items()
    if not (op is conv_bias_add_relu and geometry[3] > 1)
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("op", "kernel", "stride", "padding", "dilation"), CASES)
def test_fake_outputs_match_real_ones_and_values_match_conv2d(op, kernel, stride, padding, dilation, batch):
    residual = op is conv_bias_add_relu
    x, weight, bias, extra = _conv_inputs(batch, kernel, stride, residual)
    if op is conv:
        bias = None
    args = (
        x,
        weight,
        *([bias] if bias is not None else []),
        *extra,
        [stride] * 2,
        [padding] * 2,
        [dilation] * 2,
    )
    torch.library.opcheck(op, args, test_utils=("test_faketensor",))
    expected = F.conv2d(x, weight, bias, stride, padding, dilation) + (extra[0] if residual else 0)
    if op is not conv:
        expected = expected.relu()
    out = op(*args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected)


def test_rewritten_model_computes_the_model():
    # Seeded weights with real batch-norm statistics and norm affines: default-initialized ones fold to
    # zero biases, which would hide a lost shortcut or GroupNorm bias.
    model = fold_frozen_batchnorm(at.load_model({"model": fixture_state_dict("r50-c5")}, variant="r50-c5"))
    fused = rewrite_for_inductor(copy.deepcopy(model))
    images, mask = example_inputs((2, 96, 128))
    with torch.no_grad():
        expected, out = model(images, mask), fused(images.contiguous(memory_format=torch.channels_last), mask)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_rewrite_needs_folded_batch_norms_and_runs_once():
    with pytest.raises(ValueError, match="fold the frozen batch norms first"):
        rewrite_for_inductor(at.build_model(at.VARIANTS["r50-c5"]))
    rewritten = rewrite_for_inductor(fold_frozen_batchnorm(at.build_model(at.VARIANTS["r50-c5"])))
    with pytest.raises(ValueError, match="already rewritten for Inductor"):
        rewrite_for_inductor(rewritten)


def test_group_norm_keeps_channels_last_and_computes_nn_group_norm():
    norm = nn.GroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = (torch.randn(2, 16, 5, 7) * 3 + 1).contiguous(memory_format=torch.channels_last)
    out = GroupNorm(norm)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=1e-5)


def _half_rounded_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x) with x and the weight rounded to float16 first, in float64 (no accumulation error)."""
    out = x.half().double() @ linear.weight.detach().half().double().t()
    return (out if linear.bias is None else out + linear.bias.detach().double()).float()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_half_product_linear_rounds_inputs_and_weight_to_float16_and_returns_float32(device, bias):
    linear = nn.Linear(256, 91, bias=bias).to(device)
    if bias:
        nn.init.normal_(linear.bias)
    x = torch.randn(3, 900, 256, device=device) * 4
    half = HalfProductLinear(linear)
    out = half(x)
    assert out.dtype == torch.float32 and out.shape == (3, 900, 91)
    assert half.weight is linear.weight and half.bias is linear.bias  # shared, still float32
    # The float16 copy padded to 96 rows of zeros (cuBLAS's aligned kernels), the output 91 wide.
    assert half.weight16.shape == (96, 256) and not half.weight16[91:].any()
    torch.testing.assert_close(out, _half_rounded_linear(linear, x), rtol=1e-5, atol=1e-5)
    # The rounding is there (float32 products differ), and within float16's relative 2**-11 per term.
    exact = linear(x)
    assert not torch.equal(out, exact)
    torch.testing.assert_close(out, exact, rtol=0, atol=0.05)


@pytest.mark.gpu
def test_half_product_linear_compiled_over_dynamic_rows_matches_eager():
    linear = nn.Linear(256, 4).cuda()
    half = HalfProductLinear(linear)
    compiled = torch.compile(half, dynamic=True, fullgraph=True)
    for rows in (900, 1800, 7200):
        x = torch.randn(rows // 900, 900, 256, device="cuda")
        out = compiled(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, half(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, _half_rounded_linear(linear, x), rtol=1e-5, atol=1e-5)


def _heads(model) -> list:
    transformer = model.transformer
    return [*transformer.class_embed, *(layer for mlp in transformer.bbox_embed for layer in mlp.layers)]


def test_rewrite_heads_takes_float16_models_only_and_keeps_layers_shared():
    for dtype in (torch.float32, torch.bfloat16):
        model = at.build_model(at.VARIANTS["r50-c5"])
        assert not any(isinstance(layer, HalfProductLinear) for layer in _heads(rewrite_heads(model, dtype)))
    model = at.build_model(at.VARIANTS["r50-c5"])
    keys = model.state_dict().keys()
    rewrite_heads(model, torch.float16)
    layers = _heads(model)
    assert all(isinstance(layer, HalfProductLinear) for layer in layers)
    # One class head and one 3-layer box MLP serve all six decoder layers: four modules, as before.
    assert len({id(layer) for layer in layers}) == 4
    assert model.state_dict().keys() == keys  # the official names, no float16 copy among them
    rewrite_heads(model, torch.float16)  # a second rewrite leaves the layers as they are
    assert all(after is before for after, before in zip(_heads(model), layers, strict=True))


def test_model_with_half_product_heads_computes_the_model():
    model = at.load_model({"model": fixture_state_dict("r50-c5")}, variant="r50-c5").eval()
    half = rewrite_heads(copy.deepcopy(model), torch.float16)
    images, mask = example_inputs((2, 96, 128))
    with torch.no_grad():
        expected, out = model(images, mask), half(images, mask)
    assert out["pred_logits"].dtype == out["pred_boxes"].dtype == torch.float32
    assert not torch.equal(out["pred_logits"], expected["pred_logits"])  # the heads' products rounded
    # The fixture's model: logits 1.3e-3 and boxes 2.0e-4 from float32 products.
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], rtol=0, atol=5e-3)
    torch.testing.assert_close(out["pred_boxes"], expected["pred_boxes"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_precomputed_queries_are_the_decoder_queries_of_the_current_weights(dtype):
    """The model with its decoder's queries precomputed computes what it computed (the same ops, run
    once), keeps its state_dict's names, and a new precomputation follows changed weights in the
    same buffers (captured CUDA graphs read them); a cast drops them."""
    model = (
        at.load_model({"model": fixture_state_dict("r50-c5")}, variant="r50-c5").eval().set_precision(dtype)
    )
    keys = model.state_dict().keys()
    precomputed = precompute_queries(copy.deepcopy(model))
    buffers = [buffer.data_ptr() for buffer in precomputed.transformer.precomputed_queries.buffers()]
    images, mask = example_inputs((2, 96, 128), dtype=dtype)
    with torch.no_grad():
        expected, out = model(images, mask), precomputed(images, mask)
    assert precomputed.state_dict().keys() == keys
    assert all(torch.equal(out[key], expected[key]) for key in expected)
    with torch.no_grad():
        for module in (model, precomputed):
            module.transformer.adapt_pos2d[0].weight.mul_(1.5)  # the self-attention's position terms
        stale = precomputed(images, mask)
        precompute_queries(precomputed)
        expected, out = model(images, mask), precomputed(images, mask)
    assert not torch.equal(stale["pred_boxes"], expected["pred_boxes"])
    assert all(torch.equal(out[key], expected[key]) for key in expected)
    assert [buffer.data_ptr() for buffer in precomputed.transformer.precomputed_queries.buffers()] == buffers
    assert precomputed.set_precision(torch.float32).transformer.precomputed_queries is None


def test_precomputed_queries_made_under_inference_mode_or_on_meta_can_be_updated():
    model = at.build_model(at.VARIANTS["r50-c5"]).eval()
    with torch.inference_mode():
        precompute_queries(model)
    precompute_queries(model)  # outside inference_mode: an in-place update of the same buffers
    assert not model.transformer.precomputed_queries.tgt.is_inference()
    with torch.device("meta"):
        meta = precompute_queries(at.build_model(at.VARIANTS["r50-c5"]))
    assert meta.transformer.precomputed_queries.tgt.shape == (1, 900, 256)


def test_a_traced_model_reads_its_precomputed_queries_and_not_the_weights_they_come_from():
    """Dynamo's graph of a model with precomputed queries takes their buffers as inputs (as the weights:
    a saved function runs on another model's), and reads none of the parameters they are made of."""
    config = dataclasses.replace(at.VARIANTS["r50-c5"], num_encoder_layers=1, num_decoder_layers=2)
    model = precompute_queries(at.build_model(config).eval())
    inputs = []

    def keep_inputs(graph_module, example_inputs):
        inputs.extend(node.name for node in graph_module.graph.find_nodes(op="placeholder"))
        return graph_module.forward

    with torch.no_grad():
        torch.compile(model, backend=keep_inputs, fullgraph=True)(*example_inputs((1, 64, 64)))
    transformer = [
        name.split("transformer_modules_", 1)[1] for name in inputs if "transformer_modules_" in name
    ]
    assert sum(name.startswith("precomputed_queries_buffers_") for name in transformer) == 2 + 3 * 2
    assert not [name for name in transformer if name.startswith(("pattern", "position", "adapt_pos2d"))]


def _images(batch: int, height: int, width: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(height * width)
    return torch.randn(batch, 3, height, width, generator=generator).to(device=device, dtype=dtype)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("size", [(1, 32, 64), (2, 17, 23)])  # 2 x 17 x 23: a partial block of pixels
def test_stem_input_kernel_pads_and_lays_out_the_images_exactly(size, dtype):
    """[B, 3, H, W] -> [B, 4, H, W] channels_last, the fourth channel zero: the same tensor as the
    PyTorch padding, values and strides (the kernel under the interpreter)."""
    images = _images(*size, dtype)
    out = four_channels.four_channels_triton(images)
    expected = reference.four_channels(images)
    assert out.dtype == dtype and out.stride() == expected.stride()
    assert torch.equal(out, expected) and not out[:, 3].any()


@needs_interpreter
def test_stem_input_wrapper_runs_no_kernel_but_its_own(monkeypatch):
    """The wrapper only allocates around its kernel: a copy (an output allocated NCHW and then made
    channels_last, or contiguous images copied again) is a second pass over 72 MB at batch 8."""
    launches = []
    # The interpreted kernel's launch is recorded instead of run: the interpreter's own copies of the
    # arguments to and from the host are not the wrapper's.
    monkeypatch.setattr(four_channels.four_channels_kernel, "run", lambda *a, **k: launches.append(k["grid"]))
    images = _images(2, 32, 416, torch.float16)
    with _AtenCalls() as calls:
        four_channels.four_channels_triton(images)
    assert len(launches) == 1
    assert calls.ops == ["empty.memory_format"]


class _AtenCalls(TorchDispatchMode):
    """The ATen overloads called under it, by name (``empty.memory_format``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(f"{func._opname}.{func._overloadname}")
        return func(*args, **(kwargs or {}))


@pytest.mark.gpu
def test_stem_input_op_on_the_gpu_is_the_padding_and_compiles_once_over_sizes():
    """The op's CUDA kernel at sizes of the backend's range, as its compiled function passes the
    images (a view of [B, 3, H/32, 32, W/32, 32]): the PyTorch padding exactly; the first size's
    Triton build serves the others (their H * W are all multiples of 16)."""
    builds = four_channels.four_channels_kernel.device_caches[torch.cuda.current_device()][0]
    counts = []
    for batch, height, width in ((1, 320, 320), (8, 800, 800), (3, 1344, 608)):
        folded = inductor.fold(
            inductor.unfold(*example_inputs((batch, height, width), "cuda", torch.float16))[0]
        )
        out = torch.ops.anchordetr_inductor.four_channels(folded)
        expected = reference.four_channels(folded)
        assert out.stride() == expected.stride() and torch.equal(out, expected)
        counts.append(len(builds))
    assert counts == counts[:1] * 3, f"Triton builds after each size: {counts}"


def test_stem_input_op_checks_its_images_and_traces():
    with pytest.raises(at.InputError, match=r"four_channels: images.shape\[1\] \(channels\) is 4"):
        torch.ops.anchordetr_inductor.four_channels(torch.zeros(1, 4, 8, 8))
    with pytest.raises(at.InputError, match="four_channels: images must be 4-d"):
        torch.ops.anchordetr_inductor.four_channels(torch.zeros(3, 8, 8))
    torch.library.opcheck(
        torch.ops.anchordetr_inductor.four_channels.default, (_images(2, 8, 16, torch.float32),)
    )

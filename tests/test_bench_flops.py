"""The benchmark's FLOP counts (bench.flops) against independent counts, the model's split into parts
(bench.parts), the peak measurement, and, on the GPU, the per-part timing of the compiled model."""

import math

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from anchordetr_trt.backends.inductor import INDUCTOR_OPTIONS
from anchordetr_trt.bench import flops, parts
from anchordetr_trt.bench.configs import BenchConfig
from anchordetr_trt.bench.latency import run_benchmark
from anchordetr_trt.config import variant_config
from anchordetr_trt.export import example_inputs
from anchordetr_trt.model import build_model
from anchordetr_trt.weights import random_model


def _meta_model(variant: str, fused: bool):
    with torch.device("meta"):
        return build_model(variant_config(variant)).set_fused_ops(fused)


def _meta_inputs(shape):
    batch, height, width = shape
    images = torch.empty(batch, 3, height, width, device="meta")
    return images, torch.zeros(batch, height, width, dtype=torch.bool, device="meta")


def _rcda_flops(queries: int, channels: int, h: int, w: int) -> int:
    """rcda_aggregate by hand: the column and row scores, then the weighted sum over an h x w map, the
    reference's two batched matmuls, over the rows for each column, then over the columns."""
    scores = 2 * queries * h * channels + 2 * queries * w * channels
    return scores + 2 * queries * channels * w * (h + 1)


def _transformer_flops_by_hand(config, h: int, w: int) -> tuple[int, int]:
    """(encoder, decoder) FLOPs of one image whose feature map is h x w, from the layer sizes."""
    C, F, Q = config.hidden_dim, config.dim_feedforward, config.num_query_pattern * config.num_query_position
    L = h * w

    def linear(tokens: int, fan_in: int, fan_out: int) -> int:
        return 2 * tokens * fan_in * fan_out

    encoder = linear(L, 2048, C) + 2 * linear(h + w, C, C)  # input projection; row/column embedding MLP
    encoder += config.num_encoder_layers * (
        4 * linear(L, C, C) + _rcda_flops(L, C, h, w)  # RCDA: q_row and q_col (one GEMM), v, out
        + 2 * linear(h + w, C, C)  # the keys; the embeddings' projections added to q_row and q_col
        + linear(L, C, F) + linear(L, F, C)  # FFN
    )  # fmt: skip
    decoder = 3 * 2 * linear(Q, C, C)  # the queries' position embeddings: three two-layer MLPs
    decoder += config.num_decoder_layers * (
        4 * linear(Q, C, C) + 2 * 2 * Q * Q * C  # self-attention: projections, scores and weighted sum
        + 3 * linear(Q, C, C) + linear(h + w, C, C) + linear(L, C, C) + _rcda_flops(Q, C, h, w)  # cross
        + 4 * linear(Q, C, C)  # the position embeddings' terms of both attentions' queries (and keys)
        + linear(Q, C, F) + linear(Q, F, C)  # FFN
    )  # fmt: skip
    decoder += linear(Q, C, config.num_classes) + 2 * linear(Q, C, C) + linear(Q, C, 4)  # heads, last layer
    return encoder, decoder


def test_backbone_flops_are_torchvisions_resnet50_count():
    # torchvision's published ResNet-50 figure: GMACs at 224x224, with the 2048 -> 1000 classifier.
    macs = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9
    counted = flops.flops_per_image(variant_config("r50-c5"), (1, 224, 224))["backbone"]
    assert counted == pytest.approx(2 * (macs - 2048 * 1000), rel=1e-3)


@pytest.mark.parametrize("variant", ["r50-c5", "r50-dc5"])
def test_encoder_and_decoder_flops_match_a_count_by_hand(variant):
    config = variant_config(variant)
    stride = 16 if config.dilation else 32
    counted = flops.flops_per_image(config, (1, 320, 448))  # not square: rows and columns differ
    encoder, decoder = _transformer_flops_by_hand(config, 320 // stride, 448 // stride)
    assert (counted["encoder"], counted["decoder"]) == (encoder, decoder)
    assert counted["total"] == counted["backbone"] + encoder + decoder


def test_per_image_flops_share_the_query_embeddings_across_the_batch():
    config = variant_config("r50-c5")
    one, four = (flops.flops_per_image(config, (batch, 320, 320)) for batch in (1, 4))
    # Once per batch: three two-layer MLPs on the 900 queries, four projections of their output for
    # each decoder layer's attentions, and the first decoder layer's self-attention (the same queries
    # for every image): its packed projection (C -> 3C), its two products, its output projection.
    first_self_attention = 2 * 900 * 256 * 3 * 256 + 2 * 2 * 900 * 900 * 256 + 2 * 900 * 256 * 256
    shared = (3 * 2 + 4 * config.num_decoder_layers) * 2 * 900 * 256 * 256 + first_self_attention
    assert one["backbone"] == four["backbone"] and one["encoder"] == four["encoder"]
    assert one["decoder"] - four["decoder"] == pytest.approx(shared * (1 - 1 / 4))


def test_parts_add_up_to_the_whole_forward():
    model = _meta_model("r50-c5", fused=False)
    images, mask = _meta_inputs((2, 320, 384))
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        model(images, mask)
    by_part = flops.count_flops(model, images, mask)
    assert list(by_part) == list(parts.PARTS) and all(count > 0 for count in by_part.values())
    assert sum(by_part.values()) == whole.get_total_flops()


def test_fused_path_misses_exactly_the_attentions_so_the_count_runs_the_reference():
    # Why flops.py counts the reference ops: the custom ops are opaque to FlopCounterMode.
    shape, config = (2, 320, 384), variant_config("r50-c5")
    counts = {
        fused: flops.count_flops(_meta_model("r50-c5", fused), *_meta_inputs(shape))
        for fused in (False, True)
    }
    h, w, channels = 320 // 32, 384 // 32, config.hidden_dim
    self_attention = 2 * 2 * 900 * 900 * channels  # its two products over 900 queries
    layers = config.num_decoder_layers
    missed = {  # RCDA's aggregation per image and layer; the self-attention per image from the second
        # decoder layer, once for the batch in the first (the same queries for every image)
        "encoder": shape[0] * config.num_encoder_layers * _rcda_flops(h * w, channels, h, w),
        "decoder": shape[0] * (layers * _rcda_flops(900, channels, h, w) + (layers - 1) * self_attention)
        + self_attention,
    }
    assert counts[False]["backbone"] == counts[True]["backbone"]
    for part, flops_missed in missed.items():
        assert counts[False][part] - counts[True][part] == flops_missed


@pytest.fixture(scope="module")
def model():
    return random_model("r50-c5").eval()


@pytest.mark.slow
def test_split_forward_computes_the_models_output(model):
    images, mask = example_inputs((2, 64, 96))
    with torch.no_grad():
        split = parts.split_forward(model, images, mask)
        logits, boxes = split[-1].call(*split[-1].args)
        whole = model(images, mask)
    assert [part.name for part in split] == list(parts.PARTS)
    torch.testing.assert_close(logits[-1], whole["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(boxes[-1], whole["pred_boxes"], rtol=0, atol=0)


def test_time_parts_eager_times_each_part(model):
    times = parts.time_parts(model, *example_inputs((1, 64, 64)), compiled=False, warmup=0, iters=1)
    assert list(times) == list(parts.PARTS) and all(math.isfinite(t) and t > 0 for t in times.values())


def test_compiled_parts_are_compiled_as_the_inductor_backend_compiles(model, monkeypatch):
    # Under the backend's Inductor settings, with CUDA graphs; torch.compile stands in (the parts run
    # eagerly here), as Inductor's settings only act on a GPU.
    seen = []
    monkeypatch.setattr(torch, "compile", lambda call, **kwargs: seen.append(kwargs) or call)
    times = parts.time_parts(model, *example_inputs((1, 64, 64)), compiled=True, warmup=0, iters=1)
    assert list(times) == list(parts.PARTS) and len(seen) == len(parts.PARTS)
    for kwargs in seen:
        assert kwargs["fullgraph"] and not kwargs["dynamic"] and "mode" not in kwargs
        assert (
            kwargs["options"]["triton.cudagraphs"] and INDUCTOR_OPTIONS.items() <= kwargs["options"].items()
        )


def test_peak_is_two_n_cubed_flops_per_call_over_the_measured_time(monkeypatch):
    calls = []
    monkeypatch.setattr(
        flops.timing, "seconds_back_to_back", lambda call, device, iters: calls.append(call()) or 2.0
    )
    before = torch.get_float32_matmul_precision()
    peak = flops.peak_tflops(torch.device("cpu"), "tf32", size=64, warmup=1, iters=10)
    assert peak["tflops"] == pytest.approx(2 * 64**3 * 10 / 2.0 / 1e12)
    assert "64x64 tf32" in peak["how"] and "'high'" in peak["how"]  # TF32 on while measuring
    assert calls[0].shape == (64, 64) and torch.get_float32_matmul_precision() == before  # and restored


@pytest.mark.parametrize(
    ("precision", "device", "cudnn_tf32", "peak"),
    [
        ("fp16", "cuda", True, "fp16"),
        ("bf16", "cuda", True, "bf16"),
        ("fp32", "cuda", True, "tf32"),
        ("fp32", "cuda", False, "fp32"),
        ("fp32", "cpu", True, "fp32"),
    ],
)
def test_rows_are_held_to_the_peak_of_their_arithmetic(precision, device, cudnn_tf32, peak, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", cudnn_tf32)
    assert flops.peak_precision(precision, torch.device(device)) == peak


def test_flops_report_counts_each_shape_once():
    section = flops.flops_report(
        variant_config("r50-c5"),
        [(1, 320, 320), (2, 320, 320), (1, 320, 320)],
        ["fp32", "fp32"],
        torch.device("cpu"),
    )
    assert [(e["batch"], e["height"], e["width"]) for e in section["per_image"]] == [
        (1, 320, 320),
        (2, 320, 320),
    ]
    assert section["per_image"][0]["gflops"]["total"] == pytest.approx(
        flops.flops_per_image(variant_config("r50-c5"), (1, 320, 320))["total"] / 1e9
    )
    assert section["peak_for"] == {"fp32": "fp32"} and set(section["parts"]) == set(parts.PARTS)


@pytest.mark.gpu
def test_parts_of_the_inductor_backend_are_timed_compiled_on_the_gpu():
    lines = []
    configs = [BenchConfig("inductor", batch, 320, 320, "fp16") for batch in (1, 2)]
    report = run_benchmark(
        configs, variant="r50-c5", device="cuda", warmup=3, iters=10, profile=False, startup=False,
        parts=True, log=lines.append,
    )  # fmt: skip
    assert report["backends"]["inductor fp16"]["parts"].startswith("torch.compile")
    for row, rate in zip(report["results"], report["flops"]["rows"], strict=True):
        assert row["status"] == "ok" and list(row["parts_ms"]) == list(parts.PARTS)
        whole_ms = 1000 * row["batch"] / row["throughput_img_s"]
        assert 0.3 * whole_ms < sum(row["parts_ms"].values()) < 3 * whole_ms, (row["parts_ms"], whole_ms)
        assert all(0 < part["percent_of_peak"] < 100 for part in rate["parts"].values())
    assert "fp16" in report["flops"]["peak_tflops"] and any("parts at batch 2" in line for line in lines)

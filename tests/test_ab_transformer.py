"""scripts.ab_transformer: the kernels of a profiled call grouped by kind, as the A/B files report them,
and the images' preparation microbench's formulations."""

import argparse
import json
import types

import pytest
import torch

from anchordetr_trt.backends.inductor import INDUCTOR_OPTIONS
from scripts import ab_transformer


def test_kernel_kinds_find_the_key_means_of_the_op_and_of_inductor():
    launches = {
        "key_means_kernel": 2,
        "triton_per_fused_add_mean_view_16": 6,  # Inductor's reductions, by their names on torch 2.11
        "triton_red_fused_add_mean_3": 1,
        # A mean fused into the input projection's GroupNorm: that kernel's kind is not the mean's.
        "triton_per_fused__to_copy_add_mean_mul_permute_rsqrt_sub_unsqueeze_var_mean_view_15": 1,
        "rcda_aggregate_kernel": 12,
        "nvjet_sm90_hsh_128x160_64x5_2x1_v_bz_coopA_bias_TNT": 3,
    }
    profile = {
        "calls": 2,
        "top": [{"name": n, "calls": 2 * c, "total_ms": c / 500} for n, c in launches.items()],
    }
    kinds = ab_transformer.kernel_kinds(profile)
    assert kinds["key means"] == {"us": 9.0, "launches": 9.0}
    assert kinds["other triton"] == {"us": 1.0, "launches": 1.0}
    assert kinds["rcda_aggregate"]["launches"] == 12 and kinds["cublas"]["launches"] == 3


def test_images_microbench_times_one_dynamic_kernel_per_formulation(monkeypatch):
    """The images' preparation as the backend runs it (the stem's op), Inductor's padding and the
    NHWC formulation give the same tensor (values and channels_last strides) at every size, each from
    one graph over the range (no recompile per size, as in the model); timing replaced, on the CPU."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(ab_transformer, "CUDA", torch.device("cpu"))
    monkeypatch.setattr(ab_transformer, "graph_us", lambda call: 1.0)
    counters.clear()
    rows = ab_transformer.images_microbench(variants=True)
    assert {row["impl"] for row in rows} == {"shipped", "inductor", "nhwc_pad", "copy of as many bytes"}
    assert all(row["exact"] for row in rows)
    assert counters["stats"]["unique_graphs"] == 3


def test_heads_microbench_times_the_padded_and_the_unpadded_product_alike(monkeypatch):
    """The heads' products as the backend has them (weights padded) and unpadded, both within float16's
    rounding of the float32 product and as far from it as each other (the padding's columns are
    dropped); on the CPU, timing replaced."""
    monkeypatch.setattr(ab_transformer, "CUDA", torch.device("cpu"))
    monkeypatch.setattr(ab_transformer, "graph_us", lambda call: 1.0)
    rows = ab_transformer.heads_microbench(variants=True)
    key = lambda row: (row["outputs"], row["batch"])
    assert sorted({key(row) for row in rows}) == [(4, 1), (4, 8), (91, 1), (91, 8)]
    by_impl = {
        impl: {key(row): row for row in rows if row["impl"] == impl} for impl in ("shipped", "unpadded")
    }
    for case, shipped in by_impl["shipped"].items():
        assert 0 < shipped["max_abs_err"] < 0.05  # rounded to float16, not exact
        assert shipped["max_abs_err"] == pytest.approx(by_impl["unpadded"][case]["max_abs_err"], rel=0.01)


@pytest.mark.parametrize("setting", [None, *INDUCTOR_OPTIONS])
def test_inductor_options_that_would_compare_equal_trees_are_refused(setting):
    # The backend's own settings are applied over --inductor-options: such an A/B would time one
    # configuration twice.
    text, message = (
        ("[1]", "a JSON object is needed")
        if setting is None
        else (json.dumps({setting: False}), f"the inductor backend sets {setting} itself")
    )
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        ab_transformer._options(text)
    assert ab_transformer._options('{"triton.enable_pdl": true}') == {"triton.enable_pdl": True}


def test_each_rcda_variant_changes_the_launch_and_is_undone_after_a_failed_build():
    from anchordetr_trt.custom_ops import rcda_aggregate

    def launches():  # the decoder at batch 1 (a small grid) and the encoder at batch 8, on 132 SMs
        return [
            rcda_aggregate.rcda_aggregate_launch_config(queries, heads, 50, 32, 2, sm_count=132)
            for queries, heads in ((900, 8), (2500, 64))
        ]

    shipped = launches()
    for settings in ab_transformer.RCDA_VARIANTS:  # a variant equal to the shipped launch times nothing new
        with ab_transformer._patched(rcda_aggregate, ab_transformer.rcda_constants(settings)):
            assert launches() != shipped, settings
    before = rcda_aggregate.BLOCK_H
    with pytest.raises(RuntimeError), ab_transformer._patched(rcda_aggregate, {"BLOCK_H": before * 2}):
        inside = rcda_aggregate.BLOCK_H
        raise RuntimeError("out of resources")
    assert (inside, rcda_aggregate.BLOCK_H) == (before * 2, before)


def test_each_self_attention_variant_changes_the_launch():
    from anchordetr_trt.custom_ops import self_attention

    def launches():  # the decoder at batch 1 (a small grid) and at batch 8, on 132 SMs
        return [self_attention.self_attention_launch_config(900, heads, 32, 132) for heads in (8, 64)]

    shipped = launches()
    # A variant equal to the shipped launch would time nothing new.
    for settings in ab_transformer.SELF_ATTENTION_VARIANTS:
        with ab_transformer._patched(self_attention, ab_transformer.self_attention_constants(settings)):
            assert launches() != shipped, settings
    assert launches() == shipped
    with ab_transformer._patched(self_attention, ab_transformer.self_attention_constants({"BLOCK_M": 32})):
        assert {meta["BLOCK_M"] for _, meta in launches()} == {32}  # at every grid size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '{"MAX_STAGE": 4}',
            "not one of rcda_aggregate's int launch constants",
        ),  # misspelt: would time nothing new
        ('{"_OP": 4}', "not one of"),
        ('{"MAX_STAGES": 4.5}', "must be an int or null"),
        ('{"MAX_STAGES": true}', "must be an int or null"),
        ("[4]", "a JSON object is needed"),
    ],
)
def test_rcda_constants_other_than_the_ops_int_constants_are_refused(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        ab_transformer._rcda_settings(text)
    assert ab_transformer._rcda_settings('{"MAX_STAGES": 4, "BLOCK_Q": null}') == {
        "MAX_STAGES": 4,
        "BLOCK_Q": None,
    }


def test_timed_reports_the_error_against_the_expected_outputs_under_the_patched_constants(monkeypatch):
    monkeypatch.setattr(ab_transformer, "graph_us", lambda call: 3.0)
    module = types.SimpleNamespace(SCALE=1.0)
    x = torch.tensor([1.0, 2.0])

    def scaled():
        return x * module.SCALE, x

    assert ab_transformer._timed(scaled, (x, x), module, {"SCALE": 1.5}) == {"us": 3.0, "max_abs_err": 1.0}
    assert module.SCALE == 1.0  # restored
    assert ab_transformer._timed(lambda: x + 0.25, x) == {"us": 3.0, "max_abs_err": 0.25}
    assert ab_transformer._timed(lambda: x) == {"us": 3.0}

    def broken():
        raise RuntimeError("out of resources: shared memory\nmore")

    assert ab_transformer._timed(broken, x) == {"error": "out of resources: shared memory"}


def test_space_to_depth_weight_computes_the_strided_convolution():
    """The 4x4 stride-1 convolution of ``space_to_depth_weight`` on the images' 2x2 blocks as channels,
    zero-padded 2 before and 1 after, is the 7x7 stride-2 convolution with padding 3 (float64)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 4, 32, 48, generator=generator, dtype=torch.float64)
    weight = torch.randn(8, 4, 7, 7, generator=generator, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(images, weight, stride=2, padding=3)
    blocks = torch.nn.functional.pad(torch.nn.functional.pixel_unshuffle(images, 2), (2, 1, 2, 1))
    got = torch.nn.functional.conv2d(blocks, ab_transformer.space_to_depth_weight(weight))
    assert got.shape == expected.shape == (2, 8, 16, 24)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_stem_microbench_forms_compute_the_same_convolution(monkeypatch):
    """The stem's convolution on 4-channel images, 8-channel images and in the space-to-depth form:
    each within float16's rounding of the float32 convolution; on the CPU at 64x64, timing replaced."""
    monkeypatch.setattr(ab_transformer, "CUDA", torch.device("cpu"))
    monkeypatch.setattr(ab_transformer, "SIZE", 64)
    monkeypatch.setattr(ab_transformer, "graph_us", lambda call: 1.0)
    rows = ab_transformer.stem_microbench(variants=True)
    assert sorted((row["batch"], row["impl"]) for row in rows) == sorted(
        (batch, impl)
        for batch in ab_transformer.BATCHES
        for impl in ("shipped", "eight_channels", "space_to_depth")
    )
    assert all(0 < row["max_abs_err"] < 0.02 for row in rows), rows


def _recorded_microbenches(monkeypatch) -> list[str]:
    called = []
    for name in ab_transformer.MICROBENCHES:
        monkeypatch.setitem(
            ab_transformer.MICROBENCHES, name, lambda ops_only, name=name: called.append(name)
        )
    return called


def test_ops_flag_picks_the_ops_timed_alone(monkeypatch, tmp_path):
    called = _recorded_microbenches(monkeypatch)
    argv = ["ab_transformer", "--out", str(tmp_path), "--tag", "t", "--ops-only", "--ops", "stem", "images"]
    monkeypatch.setattr("sys.argv", argv)
    ab_transformer.main()
    assert called == ["stem", "images"]
    assert (tmp_path / "ab_transformer_t.json").exists()


def test_ops_flag_given_no_name_times_the_model_only(monkeypatch, tmp_path, capsys):
    """``--ops`` alone: no op timed alone, the model only (which needs CUDA: stopped where it starts);
    with ``--ops-only`` it would time nothing, and is refused."""
    called = _recorded_microbenches(monkeypatch)
    argv = ["ab_transformer", "--out", str(tmp_path), "--tag", "t", "--ops"]
    monkeypatch.setattr("sys.argv", [*argv, "--ops-only"])
    with pytest.raises(SystemExit):
        ab_transformer.main()
    assert "--ops-only with no op to time" in capsys.readouterr().err

    class ModelReached(Exception):
        pass

    def model_runs(args, report, save):
        raise ModelReached

    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.setattr(ab_transformer, "model_runs", model_runs)
    with pytest.raises(ModelReached):
        ab_transformer.main()
    assert called == []

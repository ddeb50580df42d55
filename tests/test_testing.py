"""anchordetr_trt.testing, the pytest plugin (run by pytester as a user would) and ``anchordetr-trt check``.

The model is the seeded random r50-c5 at 96..160 pixels, built once per module. Its untrained boxes
look alike for every query, so each planted fault is one that the logits, the per-query matching or
the NaN count must expose.
"""

import contextlib
import copy
import io
import json

import pytest
import torch
from conftest import needs_interpreter

import anchordetr_trt as at
from anchordetr_trt import checks, cli
from anchordetr_trt.backends import backend_status
from anchordetr_trt.custom_ops.cases import OP_CASES, as_tuple
from anchordetr_trt.testing import (
    TOLERANCES,
    assert_detections_close,
    assert_parity,
    compare_detections,
    example_batches,
)
from anchordetr_trt.weights import random_model

pytest_plugins = ["pytester"]

IMAGE_SIZES = (((120, 160), (160, 100)),)  # one batch of two images, both padded to 160x160


@pytest.fixture(scope="module")
def reference():
    return random_model("r50-c5").set_fused_ops(False)


@pytest.fixture(scope="module")
def batch():
    ((images, mask),) = example_batches(IMAGE_SIZES)
    assert mask[0].any() and mask[1].any(), "both images should be padded"
    return images, mask


@pytest.fixture(scope="module")
def expected(reference, batch):
    with torch.no_grad():
        return reference(*batch)


def perturbed(reference, change) -> torch.nn.Module:
    """A copy of ``reference`` after ``change(model)`` (under no_grad)."""
    model = copy.deepcopy(reference)
    with torch.no_grad():
        change(model)
    return model


def class_head(model) -> torch.nn.Linear:
    return model.transformer.class_embed[0]  # shared by every decoder layer


# ---------------------------------------------------------------------------------------------------
# assert_detections_close on outputs


def test_equal_outputs_are_close(expected):
    assert_detections_close(expected, {k: v.clone() for k, v in expected.items()})
    comparison = compare_detections(expected, expected)
    assert comparison.failures == [] and comparison.match_rate == 1.0
    assert comparison.compared == 200  # top 100 of each image: random weights score every class ~0.5


def test_one_changed_logit_is_reported_where_it_is(expected):
    actual = {k: v.clone() for k, v in expected.items()}
    actual["pred_logits"][1, 7, 3] += 0.1
    with pytest.raises(AssertionError) as error:
        assert_detections_close(actual, expected, msg="my model vs eager")
    report = str(error.value)
    assert report.startswith("my model vs eager\nDetections are not close (tolerances for fp32")
    assert "FAIL pred_logits: max abs diff 0.1 (limit 0.005) at image 1, query 7, class 3" in report
    assert "ok   pred_boxes: max abs diff 0 " in report


def test_defaults_follow_the_precision_and_can_be_overridden(expected):
    # logits off by 0.02, boxes by 0.011 (just above fp16's 0.01; more would move small boxes below IoU 0.9)
    actual = {"pred_logits": expected["pred_logits"] + 0.02, "pred_boxes": expected["pred_boxes"] + 0.011}
    with pytest.raises(AssertionError, match="tolerances for fp32"):
        assert_detections_close(actual, expected)
    with pytest.raises(AssertionError, match=r"pred_boxes: max abs diff 0\.011 \(limit 0\.01\)"):
        assert_detections_close(actual, expected, precision="fp16")
    assert_detections_close(actual, expected, precision="fp16", boxes_atol=0.02)
    assert_detections_close(actual, expected, precision="bf16")
    half = compare_detections({k: v.half() for k, v in actual.items()}, expected)  # fp16 by its dtype
    assert half.precision == "fp16" and half.tolerance == TOLERANCES["fp16"] and half.failures
    assert TOLERANCES["fp32"].logits_atol < TOLERANCES["fp16"].logits_atol < TOLERANCES["bf16"].logits_atol


def test_a_moved_box_is_unmatched(expected):
    actual = {k: v.clone() for k, v in expected.items()}
    actual["pred_boxes"][0, :, :2] += 0.2  # every box of image 0 moves; logits unchanged
    comparison = compare_detections(actual, expected, precision="fp16", boxes_atol=1.0)
    assert comparison.per_image == [(0, 100), (100, 100)] and comparison.worst_image == 0
    assert any("matched 50.0% < 99%" in failure for failure in comparison.failures)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "int8"}, ValueError, "unknown precision 'int8'"),
        ({"logit_atol": 0.1}, at.InputError, "unknown tolerance logit_atol"),
        ({"top_k": 0}, ValueError, "top_k must be an int >= 1"),
        ({"top_k": True}, ValueError, "top_k must be an int >= 1"),
        ({"logits_atol": float("nan")}, ValueError, "logits_atol must be a finite number >= 0, got nan"),
        ({"boxes_atol": -1.0}, ValueError, "boxes_atol must be a finite number >= 0"),
        ({"score_atol": None}, ValueError, "score_atol must be a finite number >= 0, got None"),
        ({"logits_atol": "0.1"}, ValueError, "logits_atol must be a finite number >= 0, got '0.1'"),
        ({"min_match_rate": 2.0}, ValueError, r"min_match_rate must be a number in \[0, 1\], got 2.0"),
        ({"iou_threshold": float("nan")}, ValueError, r"iou_threshold must be a number in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_named(expected, kwargs, error, match):
    with pytest.raises(error, match=match):
        assert_detections_close(expected, expected, **kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda out: {**out, "pred_logits": out["pred_logits"][:0]},
            r"actual\['pred_logits'\] must be a tensor \[B, Q, classes\] with B, Q >= 1, got \[0,",
        ),
        (
            lambda out: {**out, "pred_boxes": out["pred_boxes"][0]},
            r"actual\['pred_boxes'\] must be a tensor \[B, Q, 4\].*got \[900, 4\]",
        ),
        (
            lambda out: {**out, "pred_boxes": out["pred_boxes"].numpy()},
            r"actual\['pred_boxes'\] must be a tensor .*got ndarray",
        ),
    ],
    ids=["empty batch", "2-D boxes", "numpy boxes"],
)
def test_outputs_that_are_no_batch_of_detections_are_named(expected, change, match):
    with pytest.raises(ValueError, match=match):
        assert_detections_close(change(expected), expected)


def test_shapes_that_differ_are_reported(expected):
    actual = {k: v[:1] for k, v in expected.items()}
    with pytest.raises(
        AssertionError, match=r"pred_logits shapes differ: actual \[1, 900, 91\], expected \[2"
    ):
        assert_detections_close(actual, expected)


# ---------------------------------------------------------------------------------------------------
# assert_parity on models: it passes for the same computation and catches planted faults


@pytest.mark.slow
def test_parity_of_the_eager_backend(reference, batch):
    compiled = at.compile(copy.deepcopy(reference), backend="eager", device="cpu", min_shape=(1, 32, 32))
    assert_parity(compiled, reference, *batch)


@pytest.mark.slow
def test_parity_on_a_list_of_images(reference):
    images = [torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8), torch.rand(3, 140, 90)]
    assert_parity(copy.deepcopy(reference), reference, images, min_size=96, max_size=128)


def plant_fp16_overflow(model):
    """The first decoder FFN's activations exceed fp16's range (65504) and are stored in fp16."""
    layer = model.transformer.decoder_layers[0].ffn.linear1
    layer.weight *= 1e6
    layer.register_forward_hook(lambda module, inputs, output: output.half().float())


def plant_nan(model):
    """The box head returns NaN for one query of each image."""

    def hook(module, inputs, output):
        output = output.clone()
        output[:, 5] = float("nan")
        return output

    model.transformer.bbox_embed[0].register_forward_hook(hook)


def swap_top_label(model, expected):
    """Swap the class head's rows of the reference's best class and its worst one at that query."""
    image_scores = expected["pred_logits"][0]
    query, best = divmod(int(image_scores.argmax()), image_scores.shape[1])
    worst = int(image_scores[query].argmin())
    head = class_head(model)
    for param in (head.weight, head.bias):
        param[[best, worst]] = param[[worst, best]].clone()


@pytest.mark.parametrize(
    ("fault", "messages"),
    [
        (
            "fp16 overflow",
            ["FAIL NaN/inf values: actual", "expected 0", "over the 0 of 163800 values finite"],
        ),
        ("nan", ["FAIL NaN/inf values: actual 8 (pred_logits 0, pred_boxes 8), expected 0"]),
        ("label swap", ["FAIL pred_logits", "FAIL matched detections"]),
    ],
)
def test_parity_catches_a_planted_fault(reference, batch, expected, fault, messages):
    change = {
        "fp16 overflow": plant_fp16_overflow,
        "nan": plant_nan,
        "label swap": lambda model: swap_top_label(model, expected),
    }[fault]
    with pytest.raises(AssertionError) as error:
        assert_parity(perturbed(reference, change), reference, *batch)
    report = str(error.value)
    assert report.startswith("AnchorDETR vs AnchorDETR on 2 image(s) of (160, 160)\nDetections are not close")
    for message in messages:
        assert message in report


# ---------------------------------------------------------------------------------------------------
# The pytest plugin, as a user runs it

USER_TEST = """
from anchordetr_trt.testing import assert_parity

def test_parity(anchordetr_model, anchordetr_reference, anchordetr_batches):
    for images, mask in anchordetr_batches:
        assert_parity(anchordetr_model, anchordetr_reference, images, mask)
"""

NUDGED_TEST = """
import copy, torch
from anchordetr_trt.testing import assert_parity

def test_parity_of_a_nudged_model(anchordetr_model, anchordetr_reference, anchordetr_batches):
    nudged = copy.deepcopy(anchordetr_reference)
    with torch.no_grad():
        nudged.transformer.class_embed[0].bias[3] += 0.5  # above fp16's 0.15
    assert_parity(anchordetr_model, nudged, *anchordetr_batches[0])
"""


def skip_reasons() -> dict[str, str]:
    return {name: why for name, (ok, why) in backend_status(torch.device("cpu")).items() if not ok}


@pytest.mark.slow
def test_plugin_passes_matching_models_and_skips_what_cannot_run(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest(
        "--anchordetr-variant", "r50-c5", "--anchordetr-device", "cpu", "-rs", "-W", "always"
    )
    reasons = skip_reasons()
    result.assert_outcomes(passed=1, skipped=len(reasons))
    output = result.stdout.str()
    assert "test_parity[eager] PASSED" in output or "1 passed" in output
    for backend, why in reasons.items():
        assert f"backend {backend!r} cannot run on cpu: {why}" in output
    assert "seeded random weights (seed 0) of r50-c5" in output  # said, since no checkpoint was given
    assert "anchordetr_trt: seeded random weights" in output  # the header line


@pytest.mark.gpu
def test_plugin_on_the_gpu_passes_eager_and_inductor(pytester):
    """The README's pytest example as a user runs it on a GPU: fp16 models against the eager fp32
    reference, at the plugin's CUDA example sizes."""
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest(
        "--anchordetr-variant",
        "r50-c5",
        "--anchordetr-device",
        "cuda",
        "--anchordetr-backends",
        "eager,inductor",
    )
    result.assert_outcomes(passed=2)


@pytest.mark.slow
def test_plugin_fails_a_nudged_model_with_a_report(pytester, reference, monkeypatch):
    ckpt = pytester.path / "model.pth"
    torch.save({"model": reference.state_dict()}, ckpt)
    monkeypatch.setenv("ANCHORDETR_CKPT", str(ckpt))
    monkeypatch.setenv("ANCHORDETR_BACKENDS", "eager")
    pytester.makepyfile(test_user=NUDGED_TEST)
    result = pytester.runpytest("--anchordetr-variant", "r50-c5", "--anchordetr-device", "cpu")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert f"anchordetr_trt: {ckpt}; backends eager" in output
    assert "eager fp32 vs AnchorDETR on 2 image(s) of (160, 160)" in output
    assert "FAIL pred_logits: max abs diff 0.5 (limit 0.005) at image 0, query" in output
    assert "class 3" in output and "seeded random weights" not in output


def test_plugin_rejects_an_unknown_backend(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest("--anchordetr-backends", "eager,onnx")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--anchordetr-backends: unknown onnx; choose from eager, inductor, tensorrt" in result.stderr.str()


# ---------------------------------------------------------------------------------------------------
# anchordetr-trt check on the CPU


def run_check(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["check", "--variant", "r50-c5", "--device", "cpu", *args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("check")
    code, printed = run_check("--out", str(out))
    return code, printed, json.loads((out / "check.json").read_text())


@pytest.mark.slow
def test_check_runs_on_the_cpu(check_run):
    code, printed, report = check_run
    assert code == 0 and report["passed"] and report["device"] == "cpu" and report["variant"] == "r50-c5"
    rows = {(r["group"], r["name"]): r for r in report["results"]}
    # On the CPU eager is the reference computation itself: no comparison of it passes as a parity check.
    eager = [r for (group, name), r in rows.items() if group == "backends" and name.startswith("eager")]
    assert [(r["name"], r["status"]) for r in eager] == [("eager", "skip")]
    assert "the reference computation itself" in eager[0]["detail"]
    exported = [r for (group, name), r in rows.items() if group == "export" and name.startswith("exported")]
    assert len(exported) == 3 and all(r["status"] == "pass" for r in exported)
    assert all(r["figures"]["max_abs_diff"]["pred_logits"] < 1e-3 for r in exported)
    for backend, why in skip_reasons().items():
        assert rows[("backends", backend)] == {
            "group": "backends", "name": backend, "status": "skip", "figures": {},
            "detail": f"cannot run on cpu: {why}",
        }  # fmt: skip
    assert rows[("tensorrt", "tensorrt")]["status"] == "skip" and rows[("tensorrt", "tensorrt")]["detail"]
    assert rows[("ops", "fused kernels")]["status"] == "skip"
    assert "PASS" in printed and "0 failed" in printed


@needs_interpreter
@pytest.mark.parametrize("spec", OP_CASES, ids=lambda spec: spec.name)
def test_op_check_runs_the_kernel_against_the_reference(spec, monkeypatch):
    """check's op row on a small case under the interpreter (on a GPU it runs spec.gpu_cases), and its
    failure when the kernel is wrong."""
    name, case = next(iter(spec.cases.items()))
    figures = checks.check_op(spec, torch.device("cpu"), {name: case})
    assert figures["cases"] == [name] and all(0 <= diff < 1e-2 for diff in figures["max_abs_diff"].values())
    launcher = spec.launcher

    def off_by_one(*args, out):
        for tensor in as_tuple(launcher(*args, out=out)):
            tensor.add_(1)
        return out

    monkeypatch.setattr(spec.module, f"{spec.name}_triton", off_by_one)
    with pytest.raises(AssertionError):
        checks.check_op(spec, torch.device("cpu"), {name: case})


@pytest.mark.slow
def test_a_failing_check_exits_non_zero(tmp_path, monkeypatch):
    # eager on the CPU is skipped as the reference itself; here it stands in for a compiled backend.
    monkeypatch.setattr(checks.CheckSuite, "_is_the_reference", lambda suite, backend: False)
    compile_model = checks.CheckSuite._compile

    def nudged(suite, backend):
        model = compile_model(suite, backend)
        with torch.no_grad():
            class_head(model.runner).bias[3] += 0.1
        return model

    monkeypatch.setattr(checks.CheckSuite, "_compile", nudged)
    code, printed = run_check("--only", "backends", "--backends", "eager", "--out", str(tmp_path))
    report = json.loads((tmp_path / "check.json").read_text())
    assert code == 1 and not report["passed"]
    assert [r["status"] for r in report["results"]] == ["fail", "fail"]
    assert "FAIL pred_logits: max abs diff 0.1" in report["results"][0]["detail"]
    assert "FAILED backends eager (2, 160, 160):" in printed and "0 passed, 2 failed" in printed


@pytest.mark.slow
def test_a_backend_that_cannot_compile_fails_each_of_its_checks(monkeypatch):
    # eager on the CPU is skipped as the reference itself; here it stands in for a compiled backend.
    monkeypatch.setattr(checks.CheckSuite, "_is_the_reference", lambda suite, backend: False)

    def unavailable(suite, backend):
        raise at.BackendUnavailableError(f"{backend} cannot build here")

    monkeypatch.setattr(checks.CheckSuite, "_compile", unavailable)
    code, printed = run_check("--only", "backends", "--backends", "eager")
    assert code == 1 and "0 passed, 2 failed, 0 skipped" in printed
    assert printed.count("BackendUnavailableError: eager cannot build here") >= 2


@pytest.mark.slow
def test_check_with_nothing_to_check_fails_saying_so(capsys):
    code, printed = run_check("--only", "tensorrt")  # no torch_tensorrt here: every row is skipped
    assert code == 1 and "0 passed, 0 failed" in printed
    assert "nothing was checked" in capsys.readouterr().err

"""Our AnchorDETR against outputs of the official implementation, and model-level invariants."""

import copy
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from official import fixture_state_dict, fixture_variants, load_fixture

import anchordetr_trt as at
from anchordetr_trt.backbone import downsample_mask
from anchordetr_trt.custom_ops import fused, ops, reference
from anchordetr_trt.custom_ops.cases import OP_CASES
from anchordetr_trt.export import example_inputs
from anchordetr_trt.transformer import ResidualLayerNorm

VARIANTS_WITH_FIXTURES = fixture_variants()


def test_fixtures_cover_c5_dc5_r50_r101():
    assert set(VARIANTS_WITH_FIXTURES) == {"r50-c5", "r50-dc5", "r101-c5", "r101-dc5"}


# r50-c5 in every tier; the other three variants with the slow tests.
@pytest.fixture(
    scope="module",
    params=[v if v == "r50-c5" else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS_WITH_FIXTURES],
)
def official(request):
    variant = request.param
    model = at.load_model({"model": fixture_state_dict(variant)}, variant=variant)
    fixture = load_fixture(variant)
    with torch.no_grad():
        out = model(fixture["batch_tensor"], fixture["batch_mask"], aux=True)
    return fixture, out


def test_outputs_match_official(official):
    fixture, out = official
    torch.testing.assert_close(out["pred_logits"], fixture["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_boxes"], fixture["pred_boxes"], atol=1e-4, rtol=0)
    assert len(out["aux_outputs"]) == len(fixture["aux_outputs"]) == 5
    for ours, theirs in zip(out["aux_outputs"], fixture["aux_outputs"], strict=True):
        torch.testing.assert_close(ours["pred_logits"], theirs["pred_logits"], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], atol=1e-4, rtol=0)


def test_postprocess_matches_official_as_sets(official):
    fixture, out = official
    ours = at.postprocess(out, fixture["target_sizes"], clip=False)  # the official boxes are unclipped
    for mine, theirs in zip(ours, fixture["postprocess"], strict=True):
        torch.testing.assert_close(
            mine["scores"].sort().values, theirs["scores"].sort().values, atol=1e-4, rtol=0
        )
        # Away from the top-k cut (where near-ties may swap), every detection has an official twin.
        cut = theirs["scores"].min() + 1e-4
        for score, label, box in zip(mine["scores"], mine["labels"], mine["boxes"], strict=True):
            if score <= cut:
                continue
            twin = (theirs["labels"] == label) & ((theirs["scores"] - score).abs() < 1e-4)
            twin &= (theirs["boxes"] - box).abs().amax(-1) < 1e-2
            assert twin.any(), f"no official detection for label {label.item()} score {score.item():.5f}"


def test_aux_outputs_only_on_request():
    model = at.build_model(at.VARIANTS["r50-c5"])
    images, mask = example_inputs((1, 96, 128))
    with torch.no_grad():
        out = model(images, mask)
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (1, 900, 91) and out["pred_boxes"].shape == (1, 900, 4)


def test_no_mask_is_an_all_false_mask():
    model = at.build_model(at.VARIANTS["r50-c5"])
    images, _ = example_inputs((2, 96, 128))
    with torch.no_grad():
        a = model(images)
        b = model(images, torch.zeros(2, 96, 128, dtype=torch.bool))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_first_decoder_self_attention_runs_once_for_the_batch():
    """Its queries are the same for every image: it runs on one, the later layers' on the batch."""
    model = at.build_model(at.VARIANTS["r50-c5"])
    batches = []
    for layer in model.transformer.decoder_layers:
        layer.self_attn.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    with torch.no_grad():
        model(*example_inputs((3, 96, 128)))
    assert batches == [1] + [3] * (len(model.transformer.decoder_layers) - 1)


@pytest.mark.slow
def test_images_in_a_batch_are_independent():
    model = at.build_model(at.VARIANTS["r50-c5"])
    images, mask = example_inputs((3, 96, 128))
    with torch.no_grad():
        batched = model(images, mask)
        alone = model(images[2:], mask[2:])
    torch.testing.assert_close(batched["pred_boxes"][2:], alone["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched["pred_logits"][2:], alone["pred_logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("in_size", [1, 7, 31, 100, 333, 800, 1344])
def test_downsample_mask_equals_nearest_interpolation(in_size):
    mask = torch.rand(2, in_size, 9) > 0.5
    for out_size in {1, in_size, 2 * in_size, -(-in_size // 16), -(-in_size // 32), max(1, in_size // 3)}:
        expected = F.interpolate(mask[None].float(), size=(out_size, 9)).bool()[0]
        assert torch.equal(downsample_mask(mask, (out_size, 9)), expected), (in_size, out_size)


@pytest.mark.parametrize(
    ("images", "mask", "message"),
    [
        (torch.zeros(3, 64, 64), None, "[B, 3, H, W]"),
        (torch.zeros(1, 4, 64, 64), None, "[B, 3, H, W]"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "float"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64), "bool"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 32, dtype=torch.bool), "does not match"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(64, 64, dtype=torch.bool), "[B, H, W]"),
        (torch.zeros(0, 3, 64, 64), None, "images has batch size 0"),
        (torch.zeros(0, 3, 64, 64), torch.zeros(0, 64, 64, dtype=torch.bool), "images has batch size 0"),
        (torch.zeros(1, 3, 0, 64), None, "images has height 0"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.float64), None, "images are torch.float64 but the model's weights "
         "are torch.float32: pass images.to(torch.float32)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.float16), None, "images are torch.float16 but the model's weights "
         "are torch.float32: pass images.to(torch.float32)"),
        (torch.zeros(1, 3, 64, 64, device="meta"), None, "images are on meta but the model is on cpu: pass "
         "images.to('cpu')"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_input_error(model_r50_c5, images, mask, message):
    with pytest.raises(at.InputError, match=re.escape(message)):
        model_r50_c5(images, mask)


@pytest.fixture(scope="module")
def model_r50_c5():
    return at.build_model(at.VARIANTS["r50-c5"])


@pytest.mark.slow
def test_half_model_takes_half_images(model_r50_c5):
    # The dtype rule is "match the weights": a converted model takes inputs of its own dtype.
    model = copy.deepcopy(model_r50_c5).to(torch.bfloat16)
    images, mask = example_inputs((1, 64, 64), dtype=torch.bfloat16)
    with torch.no_grad():
        assert model(images, mask)["pred_logits"].dtype == torch.bfloat16


def test_set_precision_keeps_anchors_and_heads_float32(model_r50_c5):
    # What compile() runs at fp16/bf16: in bfloat16 the boxes would lie on a grid of 1/256.
    model = copy.deepcopy(model_r50_c5).set_precision(torch.bfloat16)
    images, mask = example_inputs((1, 64, 64), dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(images, mask)
    assert model.input_proj[0][0].weight.dtype == torch.bfloat16
    for name in ("position", "class_embed", "bbox_embed"):  # float32 and never rounded
        kept, original = getattr(model.transformer, name), getattr(model_r50_c5.transformer, name)
        assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), original.parameters(), strict=True))
    assert out["pred_boxes"].dtype == out["pred_logits"].dtype == torch.float32
    boxes = out["pred_boxes"]
    assert not torch.equal(boxes, boxes.bfloat16().float())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backbone": "resnet18"}, "backbone='resnet18' is not supported: choose one of resnet50, resnet101"),
        ({"dilation": "yes"}, "dilation must be True (DC5) or False (C5), got 'yes'"),
        ({"hidden_dim": 100}, "hidden_dim=100 must be a multiple of 32 (GroupNorm groups) and of num_heads=8"),
        ({"hidden_dim": 96, "num_heads": 5}, "hidden_dim=96 must be a multiple of 32 (GroupNorm groups) and of num_heads=5"),
        ({"num_heads": 0}, "num_heads must be an integer >= 1, got 0"),
        ({"num_heads": 8.0}, "num_heads must be an integer >= 1, got 8.0"),
        ({"num_decoder_layers": 0}, "num_decoder_layers must be an integer >= 1, got 0"),
        ({"num_encoder_layers": -1}, "num_encoder_layers must be an integer >= 0, got -1"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ({"num_query_pattern": True}, "num_query_pattern must be an integer >= 1, got True"),
    ],
)  # fmt: skip
def test_bad_config_fields(fields, message):
    with pytest.raises(at.InputError, match=re.escape(message)):
        at.AnchorDETRConfig(**fields)


def test_config_checks_allow_what_the_model_builds():
    # The smallest config the checks allow builds and runs: they refuse nothing the model can do.
    config = at.AnchorDETRConfig(
        hidden_dim=32, num_heads=1, num_encoder_layers=0, num_decoder_layers=1, dim_feedforward=8,
        num_query_position=2, num_query_pattern=1, num_classes=1, dilation=False,
    )  # fmt: skip
    images, mask = example_inputs((1, 64, 64))
    with torch.no_grad():
        out = at.build_model(config)(images, mask)
    assert out["pred_logits"].shape == (1, 2, 1) and torch.isfinite(out["pred_boxes"]).all()


def test_one_op_rule_for_built_and_loaded_models(model_r50_c5):
    # build_model and load_model leave the choice to the input's device (None): same weights, same code.
    loaded = at.load_model(model_r50_c5.state_dict(), variant="r50-c5")
    for model in (model_r50_c5, loaded):
        assert {m.fused_ops for m in model.modules() if hasattr(m, "fused_ops")} == {None}
    cpu, cuda = torch.zeros(1), SimpleNamespace(is_cuda=True)
    assert ops(None, cpu) is reference and ops(None, cuda) is fused and ops(True, cpu) is fused
    assert ops(False, cuda) is reference


def test_ops_are_registered_on_package_import():
    names = tuple(spec.name for spec in OP_CASES)
    code = f"import anchordetr_trt, torch; print(all(hasattr(torch.ops.anchordetr, n) for n in {names}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_residual_layer_norm_keeps_layer_norm_keys():
    norm = ResidualLayerNorm(8)
    assert set(norm.state_dict()) == {"weight", "bias"}
    x, residual = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(norm(x, residual), F.layer_norm(x + residual, (8,), norm.weight, norm.bias))


@pytest.mark.slow
def test_fully_padded_image_is_refused_and_where_unchecked_gives_finite_outputs():
    """The model refuses a CPU mask that pads a whole image, as compiled modules do; where the mask is
    not read back (on a GPU, in a traced graph), such an image still gives finite outputs."""
    model = at.build_model(at.VARIANTS["r50-c5"])
    images, _ = example_inputs((2, 96, 128))
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1] = True
    with pytest.raises(at.InputError, match="marks every pixel of image 1 as padding"):
        model(images, mask)
    with torch.no_grad():  # the forward pass past its input check
        logits, boxes = model.transformer.decode(model.encode(model.backbone(images), mask))
    assert torch.isfinite(logits).all() and torch.isfinite(boxes).all()

"""scripts.train_synthetic and scripts.gpu_accuracy on the CPU with a small AnchorDETR: matcher,
set loss, batch-norm swap and fold-back, training steps, checkpoints, and the accuracy report."""

import copy
import importlib
import json
import time
from types import ModuleType

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import anchordetr_trt as at
from anchordetr_trt.config import config_from_args

pytest.importorskip("scipy", reason="the training extra: pip install 'anchordetr_trt[train]'")

SMALL = at.AnchorDETRConfig(
    dilation=False,
    num_heads=4,
    num_encoder_layers=1,
    num_decoder_layers=2,
    dim_feedforward=64,
    num_query_position=10,
    num_query_pattern=2,
)  # hidden_dim stays 256: the sine position embeddings have that width


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"scripts.{name}")  # the repository root is on pytest's pythonpath


@pytest.fixture(scope="module")
def ts():
    return _load("train_synthetic")


@pytest.fixture(scope="module")
def tiny_recipe(ts):
    return ts.Recipe(min_size=64, max_size=96, max_objects=3, input_size=64, val_images=4)


def _targets(*boxes_and_labels):
    return [
        {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        for boxes, labels in boxes_and_labels
    ]


# --- data ----------------------------------------------------------------------------------------------


def test_training_batches_are_what_preprocess_gives_the_evaluation(ts, tiny_recipe):
    from PIL import Image

    from anchordetr_trt.eval.synthetic import synthetic_image

    dataset = ts.ShapesDataset(tiny_recipe)
    images, mask, targets = ts.to_device(ts.collate(64)([dataset[0], dataset[1]]), torch.device("cpu"))
    assert images.shape == (2, 3, 64, 64) and images.is_contiguous(memory_format=torch.channels_last)
    for i in range(2):
        pixels, objects = synthetic_image(
            tiny_recipe.train_seed, i, min_size=64, max_size=96, max_objects=tiny_recipe.max_objects
        )
        expected, _, _ = at.preprocess([Image.fromarray(pixels)], min_size=64, max_size=64)
        h, w = expected.shape[-2:]
        torch.testing.assert_close(images[i, :, :h, :w], expected[0], rtol=0, atol=1e-6)
        assert (
            not mask[i, :h, :w].any()
            and mask[i].sum() == 64 * 64 - h * w
            and images[i][:, mask[i]].eq(0).all()
        )
        height, width = pixels.shape[:2]
        scale = torch.tensor([width, height, width, height])
        xywh = [o["bbox"] for o in objects]
        got = targets[i]["boxes"] * scale
        torch.testing.assert_close(
            got[:, :2] - got[:, 2:] / 2, torch.tensor(xywh, dtype=torch.float32)[:, :2]
        )
        assert targets[i]["labels"].tolist() == [o["category_id"] for o in objects]


# --- matcher and loss ------------------------------------------------------------------------------------


def test_matcher_finds_the_optimal_assignment_where_greedy_fails(ts):
    # L1 cost only (cx differs): greedy takes q0 -> t0 (0.04) and leaves t1 with q1 (0.30): 0.34 in all;
    # the optimum is q1 -> t0 (0.20) and q0 -> t1 (0.06): 0.26.
    matcher = ts.HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)
    boxes = torch.tensor([[0.54, 0.5, 0.1, 0.1], [0.3, 0.5, 0.1, 0.1], [0.95, 0.5, 0.1, 0.1]])
    targets = _targets(
        ([[0.5, 0.5, 0.1, 0.1], [0.6, 0.5, 0.1, 0.1]], [1, 3]), ([], []), ([[0.9, 0.5, 0.1, 0.1]], [7])
    )
    logits = torch.zeros(1, 3, 3, 91)
    matches = matcher(logits, boxes.expand(1, 3, 3, 4), targets)
    (q0, t0), (q1, t1), (q2, t2) = matches[0]
    assert dict(zip(t0.tolist(), q0.tolist(), strict=True)) == {0: 1, 1: 0}
    assert len(q1) == len(t1) == 0
    assert q2.tolist() == [2] and t2.tolist() == [0]  # the nearest query for the third image


def test_matcher_with_default_costs_picks_the_query_that_predicts_the_target(ts):
    logits = torch.full((2, 1, 4, 91), -5.0)
    boxes = torch.tensor(
        [[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.3, 0.2], [0.8, 0.3, 0.2, 0.2], [0.5, 0.5, 0.3, 0.2]]
    )
    logits[:, 0, 3, 18] = 5.0  # query 3 says "dog" where queries 1 and 3 both have the dog's box
    targets = _targets(([[0.5, 0.5, 0.3, 0.2], [0.2, 0.2, 0.1, 0.1]], [18, 1]))
    for layer in ts.HungarianMatcher()(logits, boxes.expand(2, 1, 4, 4), targets):
        ((query, target),) = layer
        assert dict(zip(target.tolist(), query.tolist(), strict=True)) == {0: 3, 1: 0}


def _outputs(logits, boxes, aux=0):
    out = {"pred_logits": logits, "pred_boxes": boxes}
    return {**out, "aux_outputs": [dict(out) for _ in range(aux)]} if aux else out


def test_set_loss_is_near_zero_for_perfect_predictions_and_grows_with_errors(ts):
    criterion = ts.SetCriterion(ts.HungarianMatcher())
    targets = _targets(
        ([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.1]], [1, 44]), ([[0.5, 0.5, 0.5, 0.5]], [85])
    )
    logits = torch.full((2, 6, 91), -12.0)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(2, 6, 1)
    for image, query in ((0, 2), (0, 4), (1, 0)):
        target = targets[image]
        k = 0 if (image, query) != (0, 4) else 1
        logits[image, query, target["labels"][k]] = 12.0
        boxes[image, query] = target["boxes"][k]
    perfect, parts = criterion(_outputs(logits, boxes), targets)
    assert perfect < 1e-3 and all(v < 1e-3 for v in parts.values())

    moved = boxes.clone()
    moved[..., 0] += 0.05
    worse, worse_parts = criterion(_outputs(logits, moved), targets)
    unsure = logits.clamp(max=0.0)  # right boxes, every score 0.5 or less
    uncertain, unsure_parts = criterion(_outputs(unsure, boxes), targets)
    assert worse > perfect + 0.1 and worse_parts["bbox"] == pytest.approx(0.05 * 3 / 3, rel=1e-4)
    assert worse_parts["giou"] > 0.1 and unsure_parts["class"] > 0.04 and uncertain > perfect
    # Auxiliary decoder outputs add their own loss: the same predictions on 3 layers, 3 times the loss.
    three, _ = criterion(_outputs(logits, moved, aux=2), targets)
    assert three.item() == pytest.approx(3 * worse.item(), rel=1e-5)


# --- batch norm swap and fold-back -----------------------------------------------------------------------


def test_batchnorm_is_trainable_then_folds_back_to_the_same_function(ts):
    torch.manual_seed(0)
    model = ts.trainable_batchnorm(at.build_model(SMALL))
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 53  # every norm of a ResNet-50
    model.train()
    with torch.no_grad():
        for _ in range(2):  # learn statistics (and give the affine parameters non-trivial values)
            model(torch.rand(2, 3, 64, 64) * 4.5 - 2)  # within the normalized pixels' range
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    assert all(norm.running_mean.abs().max() > 0 for norm in norms)  # statistics were learned
    images, mask = torch.randn(2, 3, 64, 80), torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, :, 60:] = True
    model.eval()
    with torch.no_grad():
        expected = model(images, mask)
        folded = ts.frozen_batchnorm(model)
        got = folded(images, mask)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert set(folded.state_dict()) == set(at.build_model(SMALL).state_dict())
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)


# --- training --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_steps_lower_the_loss_on_one_image(ts, tiny_recipe):
    image, target = ts.ShapesDataset(tiny_recipe)[0]
    batch = ts.collate(tiny_recipe.input_size)([(image, target)])
    images, mask, targets = ts.to_device(batch, torch.device("cpu"))
    model = ts.build_for_training(SMALL, torch.device("cpu"), seed=0)
    criterion = ts.SetCriterion(ts.HungarianMatcher())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # larger first Adam steps overshoot
    before = copy.deepcopy(model.state_dict())
    losses = []
    for _ in range(5):
        loss, parts, taken = ts.train_step(
            model, criterion, optimizer, images, mask, targets, autocast_dtype=None, clip_norm=0.1
        )
        assert taken and torch.isfinite(loss) and set(parts) == {"class", "bbox", "giou"}
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:3]), losses
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(
        k.startswith("transformer.") for k in changed
    )


def test_a_step_with_a_non_finite_loss_is_skipped(ts, tiny_recipe):
    model = ts.build_for_training(SMALL, torch.device("cpu"), seed=0)
    before = copy.deepcopy(model.state_dict())
    images = torch.zeros(1, 3, 64, 64)
    # NaN features, as an fp16 overflow in training makes them (the model refuses NaN pixels).
    model.backbone.register_forward_hook(lambda module, inputs, features: features * float("nan"))
    loss, _, taken = ts.train_step(
        model.eval(),  # eval: the NaN must not reach the running statistics either
        ts.SetCriterion(ts.HungarianMatcher()),
        torch.optim.AdamW(model.parameters()),
        images,
        torch.zeros(1, 64, 64, dtype=torch.bool),
        _targets(([[0.5, 0.5, 0.2, 0.2]], [1])),
        autocast_dtype=None,
        clip_norm=0.1,
    )
    assert not taken and not torch.isfinite(loss)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_train_loop_saves_a_checkpoint_that_load_model_loads_strictly(ts, tiny_recipe, tmp_path):
    model, curve = ts.train(
        SMALL,
        tiny_recipe,
        device=torch.device("cpu"),
        deadline=time.perf_counter() + 3600,
        max_steps=2,
        batch_size=2,
        workers=0,
        log_every=1,
    )
    assert curve["steps"] == 2 and [e["step"] for e in curve["log"]] == [1, 2]
    assert all(e["loss"] > 0 and e["lr"] > 0 for e in curve["log"]) and curve["skipped_steps"] == 0
    assert not model.training and any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())

    path = ts.save_checkpoint(model, tmp_path / "ckpt" / "model.pth", steps=2)
    loaded = at.load_model(path)
    assert loaded.config == SMALL
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, mask)["pred_boxes"], model(images, mask)["pred_boxes"])
    assert not (tmp_path / "ckpt" / "model.pth.partial").exists()


@pytest.mark.parametrize("variant", ["r50-c5", "r50-dc5"])
def test_checkpoint_args_describe_the_variant(ts, variant):
    assert config_from_args(ts.checkpoint_args(at.VARIANTS[variant], steps=10)) == at.VARIANTS[variant]


def test_an_existing_checkpoint_is_reused(ts, tmp_path):
    ckpt = ts.save_checkpoint(at.build_model(SMALL), tmp_path / "model.pth")
    ckpt.with_suffix(".json").write_text(json.dumps({"steps": 7}))
    assert ts.main(["--out", str(tmp_path / "out"), "--ckpt", str(ckpt)]) == 0
    assert json.loads((tmp_path / "out" / "train.json").read_text()) == {"steps": 7}


def test_schedule_warms_up_then_decays(ts):
    schedule = ts.Schedule(warmup=0.1, floor=0.05)
    factors = [schedule.factor(p / 100) for p in range(101)]
    assert factors[0] < 0.05 and factors[10] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.05) and factors[50] < factors[20]


# --- the accuracy report ---------------------------------------------------------------------------------


class _MovedBoxes(nn.Module):
    """``model`` with every box moved right by half its width (IoU 1/3 with the original)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, mask):
        out = self.model(images, mask)
        boxes = out["pred_boxes"].clone()
        boxes[..., 0] += 0.5 * boxes[..., 2]
        return {**out, "pred_boxes": boxes}


@pytest.mark.slow
def test_accuracy_report_of_equal_and_perturbed_models(ts, tiny_recipe, tmp_path):
    accuracy = _load("gpu_accuracy")
    ann_file, image_dir = tiny_recipe.val_split(tmp_path / "data")
    torch.manual_seed(0)
    reference = at.build_model(SMALL)  # random weights: every score about 0.83, all above 0.3
    builders = {
        "eager_fp16": lambda: copy.deepcopy(reference),  # the same function: nothing may differ
        "inductor_fp16": lambda: _MovedBoxes(copy.deepcopy(reference)),
    }
    meta = {"variant": "custom", "train_minutes": 0.1, "commit": "abc", "val": {"input_size": 64}}
    settings = ts.val_settings(tiny_recipe, 2)
    report = accuracy.run(
        reference, builders, ann_file, image_dir, settings, meta, tmp_path / "out", log=lambda _: None
    )

    same, moved = report["eager_fp16"], report["inductor_fp16"]
    assert same["compared"] > 0 and same["matched_rate"] == 1.0 and same["delta_ap"] == 0.0
    assert same["max_abs_diff"] == {"pred_logits": 0.0, "pred_boxes": 0.0} and same["non_finite"] == 0
    assert moved["matched_rate"] < 0.5 and moved["max_abs_diff"]["pred_boxes"] > 0.01
    peaks = report["fp16_activations"]
    assert peaks["max_abs"] > 0 and "backbone.body.conv1" in peaks["modules"]
    assert peaks["max_abs"] == max(peaks["modules"].values())

    saved = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    for key in ("variant", "train_minutes", "ap_fp32", "ap50_fp32", "commit"):
        assert key in saved
    for name in ("eager_fp16", "inductor_fp16"):
        assert {"ap", "delta_ap", "matched_rate", "non_finite"} <= set(saved[name])
    missed = saved["missed_targets"]
    assert saved["configs"] == ["eager_fp16", "inductor_fp16"]
    assert any("inductor_fp16 matched rate" in m for m in missed)
    assert not any(m.startswith("eager_fp16") for m in missed)  # delta 0, all matched, all finite
    assert not any("bf16" in m for m in missed)  # not asked for, so not a missed target
    markdown = (tmp_path / "out" / "accuracy.md").read_text()
    assert "| eager_fp16 | +0.000 | 1.0000" in markdown and "FP16 headroom" in markdown


def test_accuracy_targets_name_each_asked_configuration_left_unmeasured():
    accuracy = _load("gpu_accuracy")
    report = {"ap_fp32": 50.0, "ap50_fp32": 80.0, "configs": ["eager_fp16", "inductor_fp16"]}
    assert accuracy.check_targets(report) == [
        "eager_fp16 was not measured",
        "inductor_fp16 was not measured",
    ]
    del report["configs"]  # a report that does not say what was asked for is held to all of them
    assert len(accuracy.check_targets(report)) == len(accuracy.CONFIGS)


def test_headroom_ranks_modules_and_names_overflow():
    accuracy = _load("gpu_accuracy")
    peaks = {"a": torch.tensor(10.0), "b": torch.tensor(70000.0).half().float(), "c": torch.tensor(300.0)}
    summary = accuracy.headroom(peaks, top=2)
    assert summary["max_abs"] == 300.0 and summary["module"] == "c" and summary["non_finite_modules"] == ["b"]
    assert [t["module"] for t in summary["top"]] == ["c", "a"]
    assert summary["fraction_of_fp16_max"] == pytest.approx(300 / 65504)
    json.dumps(summary, allow_nan=False)  # an overflowed module is listed, not written as Infinity


@pytest.mark.no_gpu
def test_accuracy_stage_without_gpu_fails_clearly(tmp_path, capsys):
    assert _load("gpu_accuracy").main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "accuracy.json").exists()

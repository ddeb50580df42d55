"""load_model: the released checkpoint layout, and clear errors for every kind of bad checkpoint."""

import argparse
import re

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt.export import example_inputs


@pytest.fixture(scope="module")
def state_dict():
    torch.manual_seed(0)
    return at.build_model(at.VARIANTS["r50-c5"]).state_dict()


@pytest.fixture(scope="module")
def released_file(tmp_path_factory, state_dict):
    """A checkpoint in the layout of the released files: model, optimizer state and training args."""
    args = argparse.Namespace(
        backbone="resnet50",
        dilation="False",
        num_feature_levels=1,
        attention_type="RCDA",
        spatial_prior="learned",
        masks=False,
        hidden_dim=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=1024,
        num_query_position=300,
        num_query_pattern=3,
        lr=1e-4,
    )
    model_sd = dict(state_dict)
    model_sd["backbone.body.bn1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path_factory.mktemp("ckpt") / "anchordetr_r50_c5.pth"
    torch.save(
        {
            "model": model_sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "lr_scheduler": {},
            "epoch": 49,
            "args": args,
        },
        path,
    )
    return path


def test_released_layout_loads_with_variant_from_args(released_file, state_dict):
    model = at.load_model(released_file)
    assert model.config == at.VARIANTS["r50-c5"]  # "False" from the command line means C5
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_bare_state_dict_with_variant_equals_file(released_file, state_dict):
    images, mask = example_inputs((1, 96, 128))
    with torch.no_grad():
        a = at.load_model(released_file)(images, mask)
        b = at.load_model(state_dict, variant="r50-c5")(images, mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_path_in_the_home_folder_loads_as_written(released_file, monkeypatch):
    monkeypatch.setenv("HOME", str(released_file.parent))
    assert at.load_model(f"~/{released_file.name}").config == at.VARIANTS["r50-c5"]


def _expect(ckpt, match, **kwargs):
    with pytest.raises(at.CheckpointError, match=match):
        at.load_model(ckpt, **kwargs)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.pth", "not found")


def test_a_mistyped_release_name_lists_the_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _expect("R50_DC5", r"not found: R50_DC5: .*name \(R50-C5, R50-DC5, R101-C5, R101-DC5\)")


def test_an_unknown_variant_stops_before_any_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before checking variant")

    monkeypatch.setattr("anchordetr_trt.checkpoint.fetch", no_download)
    _expect("r50-dc5", "unknown variant 'r50'", variant="r50")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("<html>Google Drive: virus scan warning</html>")
    _expect(path, "not a PyTorch checkpoint")


def test_truncated_file(tmp_path, released_file):
    path = tmp_path / "truncated.pth"
    path.write_bytes(released_file.read_bytes()[: released_file.stat().st_size // 2])
    _expect(path, "truncated or corrupt")


def test_legacy_serialization_loads(tmp_path, released_file, state_dict):
    # torch.save(..., _use_new_zipfile_serialization=False) writes a pickle stream, not a zip archive.
    path = tmp_path / "legacy.pth"
    torch.save(torch.load(released_file, weights_only=False), path, _use_new_zipfile_serialization=False)
    model = at.load_model(path)
    assert model.config == at.VARIANTS["r50-c5"]
    assert torch.equal(model.state_dict()["input_proj.0.0.weight"], state_dict["input_proj.0.0.weight"])


def test_truncated_legacy_file(tmp_path, state_dict):
    path = tmp_path / "legacy.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:100_000])
    _expect(path, r"could not be read as a checkpoint .* truncated", variant="r50-c5")


def test_html_page_saved_as_checkpoint(tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    _expect(path, r"not a PyTorch checkpoint but a web page \(HTML\).*download it in a browser")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "device='tpu' is not supported: choose one of 'cpu', 'cuda' or 'cuda:N'"),
        ("mps", "device='mps' is not supported: choose one of 'cpu', 'cuda' or 'cuda:N'"),
        ("gpu", "device='gpu' is not supported: choose one of 'cpu', 'cuda' or 'cuda:N'"),
        (3.5, "device=3.5 is not supported: choose one of 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_unknown_device(state_dict, device, message):
    with pytest.raises(at.InputError, match=re.escape(message)):
        at.load_model(state_dict, variant="r50-c5", device=device)


def test_cuda_without_gpu_says_use_cpu(state_dict, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        at.BackendUnavailableError, match=re.escape("no CUDA GPU is visible: use device='cpu'")
    ):
        at.load_model(state_dict, variant="r50-c5", device="cuda")


def test_cuda_index_past_the_visible_gpus(state_dict, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(at.InputError, match=re.escape("device='cuda:3' but only 1 CUDA GPU(s) are visible")):
        at.load_model(state_dict, variant="r50-c5", device="cuda:3")


def _with_other_classes(state_dict: dict) -> dict:
    other = dict(state_dict)
    for i in range(6):
        other[f"transformer.class_embed.{i}.weight"] = torch.zeros(80, 256)
        other[f"transformer.class_embed.{i}.bias"] = torch.zeros(80)
    return other


def _with_deeper_backbone(state_dict: dict) -> dict:
    deeper = dict(state_dict)
    for block in range(6, 23):
        for key, value in state_dict.items():
            if key.startswith("backbone.body.layer3.1."):
                deeper[key.replace("layer3.1.", f"layer3.{block}.")] = value
    return deeper


# (what is wrong, the checkpoint made from the fixture's state dict, load_model's variant, the message)
BAD_CHECKPOINTS = {
    "bare state dict without variant": (lambda sd: sd, None, "pass variant="),
    "unknown variant": (lambda sd: sd, "r50", "unknown variant 'r50'"),
    "missing keys": (
        lambda sd: {k: v for k, v in sd.items() if not k.startswith("transformer.decoder_layers.5.")},
        "r50-c5",
        r"missing keys \(transformer\.decoder_layers\.5\.",
    ),
    "unexpected keys": (
        lambda sd: dict(sd, **{"transformer.level_embed.weight": torch.zeros(3, 256)}),
        "r50-c5",
        r"1 unexpected keys \(transformer\.level_embed\.weight\)",
    ),
    "other number of classes": (
        _with_other_classes,
        "r50-c5",
        r"shape mismatches \(transformer\.class_embed\.0\.weight: checkpoint \[80, 256\]",
    ),
    "deeper backbone than the variant": (
        _with_deeper_backbone,
        "r50-c5",
        "resnet101 backbone.*variant='r101-c5'",
    ),
    "non-finite weights": (
        lambda sd: dict(sd, **{"input_proj.0.0.bias": torch.full((256,), float("nan"))}),
        "r50-c5",
        r"NaN or infinite values in input_proj\.0\.0\.bias",
    ),
    "int8 weights (a quantized tensor without its scale)": (
        lambda sd: dict(
            sd, **{"transformer.class_embed.0.weight": sd["transformer.class_embed.0.weight"].to(torch.int8)}
        ),
        "r50-c5",
        r"not floating point in transformer\.class_embed\.0\.weight \(int8\)",
    ),
    "bool weights": (
        lambda sd: dict(sd, **{"input_proj.0.0.weight": sd["input_proj.0.0.weight"] > 0}),
        "r50-c5",
        r"not floating point in input_proj\.0\.0\.weight \(bool\)",
    ),
    "complex bias": (
        lambda sd: dict(
            sd, **{"transformer.class_embed.0.bias": sd["transformer.class_embed.0.bias"].to(torch.complex64)}
        ),
        "r50-c5",
        r"not floating point in transformer\.class_embed\.0\.bias \(complex64\)",
    ),
    "weights on the meta device": (
        lambda sd: dict(sd, **{"input_proj.0.0.bias": torch.empty(256, device="meta")}),
        "r50-c5",
        r"no values \(on the meta device\) in input_proj\.0\.0\.bias",
    ),
    "negative batch-norm variances (NaN in every output)": (
        lambda sd: dict(sd, **{"backbone.body.bn1.running_var": -sd["backbone.body.bn1.running_var"]}),
        "r50-c5",
        r"negative batch-norm variances in backbone\.body\.bn1\.running_var",
    ),
    "not a dict": (lambda sd: [1, 2, 3], None, "holds a list"),
    "dict without model": (lambda sd: {"epoch": 3, "args": None}, None, "without a 'model' state dict"),
    "unsupported training args": (
        lambda sd: {
            "model": sd,
            "args": argparse.Namespace(backbone="resnet50", dilation=True, num_feature_levels=3),
        },
        None,
        "num_feature_levels=3",
    ),
    "training args without dilation": (
        lambda sd: {"model": sd, "args": argparse.Namespace(backbone="resnet50")},
        None,
        "no 'dilation' to tell C5 from DC5: pass variant=",
    ),
    "training args of another type": (
        lambda sd: {"model": sd, "args": "x"},
        None,
        "'args' is a str.*pass variant=",
    ),
    "training args the model cannot build": (
        lambda sd: {"model": sd, "args": argparse.Namespace(backbone="resnet18", dilation=False)},
        None,
        "backbone='resnet18' is not supported.*pass variant=",
    ),
}


@pytest.mark.parametrize(("make", "variant", "match"), BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_bad_checkpoints_are_explained(state_dict, make, variant, match):
    _expect(make(state_dict), match, variant=variant)


@pytest.mark.parametrize(
    "args",
    [argparse.Namespace(backbone="resnet50"), "x", argparse.Namespace(backbone="resnet18", dilation=False)],
    ids=["without dilation", "another type", "cannot build"],
)
def test_variant_passes_over_args_that_ask_for_it(state_dict, args):
    """The errors above say "pass variant=...": passing it must then load the weights."""
    model = at.load_model({"model": state_dict, "args": args}, variant="r50-c5")
    assert model.config == at.VARIANTS["r50-c5"]
    key = "transformer.class_embed.0.bias"
    assert torch.equal(model.state_dict()[key], state_dict[key])


def test_variant_does_not_pass_over_unsupported_training_args(state_dict):
    args = argparse.Namespace(backbone="resnet50", dilation=False, num_feature_levels=3)
    _expect({"model": state_dict, "args": args}, "num_feature_levels=3", variant="r50-c5")


def test_a_variant_other_than_the_training_args_is_used_with_a_warning(released_file, caplog):
    with caplog.at_level("WARNING", logger="anchordetr_trt"):
        model = at.load_model(released_file, variant="r50-dc5")
    assert model.config == at.VARIANTS["r50-dc5"]
    assert (
        "the variant passed (r50-dc5) overrides the checkpoint's training arguments (r50-c5)" in caplog.text
    )


def test_load_or_random_loads_a_checkpoint_else_builds_seeded_random_weights(state_dict):
    from anchordetr_trt.config import DEFAULT_VARIANT, variant_name
    from anchordetr_trt.weights import load_or_random, random_model

    loaded = load_or_random({"model": state_dict}, variant="r50-c5")
    torch.testing.assert_close(loaded.state_dict(), state_dict, atol=0, rtol=0)
    seeded = load_or_random(None, variant="r50-c5", seed=3)
    torch.testing.assert_close(seeded.state_dict(), random_model("r50-c5", 3).state_dict(), atol=0, rtol=0)
    assert variant_name(load_or_random(None).config) == DEFAULT_VARIANT

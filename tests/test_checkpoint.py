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


def _expect(ckpt, match, **kwargs):
    with pytest.raises(at.CheckpointError, match=match):
        at.load_model(ckpt, **kwargs)


def test_bare_state_dict_needs_variant(state_dict):
    _expect(state_dict, "pass variant=")


def test_unknown_variant(state_dict):
    _expect(state_dict, "unknown variant 'r50'", variant="r50")


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


def test_missing_keys(state_dict):
    partial = {k: v for k, v in state_dict.items() if not k.startswith("transformer.decoder_layers.5.")}
    _expect(partial, r"missing keys \(transformer\.decoder_layers\.5\.", variant="r50-c5")


def test_unexpected_keys(state_dict):
    extra = dict(state_dict, **{"transformer.level_embed.weight": torch.zeros(3, 256)})
    _expect(extra, r"1 unexpected keys \(transformer\.level_embed\.weight\)", variant="r50-c5")


def test_other_num_classes(state_dict):
    other = dict(state_dict)
    for i in range(6):
        other[f"transformer.class_embed.{i}.weight"] = torch.zeros(80, 256)
        other[f"transformer.class_embed.{i}.bias"] = torch.zeros(80)
    _expect(
        other,
        r"shape mismatches \(transformer\.class_embed\.0\.weight: checkpoint \[80, 256\]",
        variant="r50-c5",
    )


def test_wrong_backbone_depth_names_the_right_variant(state_dict):
    deeper = dict(state_dict)
    for block in range(6, 23):
        for key, value in state_dict.items():
            if key.startswith("backbone.body.layer3.1."):
                deeper[key.replace("layer3.1.", f"layer3.{block}.")] = value
    _expect(deeper, "resnet101 backbone.*variant='r101-c5'", variant="r50-c5")


def test_non_finite_weights(state_dict):
    broken = dict(state_dict)
    broken["input_proj.0.0.bias"] = torch.full((256,), float("nan"))
    _expect(broken, r"NaN or infinite values in input_proj\.0\.0\.bias", variant="r50-c5")


def test_not_a_dict():
    _expect([1, 2, 3], "holds a list")


def test_dict_without_model():
    _expect({"epoch": 3, "args": None}, "without a 'model' state dict")


def test_unsupported_training_args(state_dict):
    args = argparse.Namespace(backbone="resnet50", dilation=True, num_feature_levels=3)
    _expect({"model": state_dict, "args": args}, "num_feature_levels=3")


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


def test_checkpoint_args_the_model_cannot_build(state_dict):
    args = argparse.Namespace(backbone="resnet18", dilation=False)
    _expect({"model": state_dict, "args": args}, "backbone='resnet18' is not supported.*pass variant=")

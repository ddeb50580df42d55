"""The ONNX route on the CPU: ``export_onnx`` of r50-dc5 and r50-c5 in fp32 and fp16 over the default
range (1,320,320)..(8,1344,1344), onnxruntime parity with the eager model, TensorRT-RTX engines built
from each file (TensorRT-RTX, not TensorRT: its builder runs on the CPU; no engine executes here),
and the ``export`` command.

An export takes about a minute on two cores: each (variant, precision) is exported once per module
and shared; r50-dc5 fp16 is exported, and its engine built, through the command line.
"""

import contextlib
import hashlib
import io
import json
import time
from pathlib import Path

import pytest
import torch

import anchordetr_trt as at
from anchordetr_trt import onnx_export
from anchordetr_trt.cache import check_replaceable
from anchordetr_trt.cli import main
from anchordetr_trt.export import example_inputs
from anchordetr_trt.onnx_export import CONTENT_DIGEST, OPSET, PRODUCER, metadata, written_by_us
from anchordetr_trt.trt_engine import RTX_MAGIC, check_engine_paths, choose_builder, rtx_mismatch
from anchordetr_trt.weights import random_model

RANGE = {"min_shape": (1, 320, 320), "opt_shape": (1, 800, 800), "max_shape": (8, 1344, 1344)}
PROFILE = {
    "images": {"min": [1, 3, 320, 320], "opt": [1, 3, 800, 800], "max": [8, 3, 1344, 1344]},
    "mask": {"min": [1, 320, 320], "opt": [1, 800, 800], "max": [8, 1344, 1344]},
}
VARIANTS = ["r50-dc5", "r50-c5"]
PRECISIONS = ["fp32", "fp16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# (batch, height, width) and each image's unpadded (height, width): batch, aspect and padding differ;
# the last image of the third is all padding, whose attention rows are fully masked (zeros, not NaN):
# the eager model refuses such an image, so it is compared on the others and the ONNX's checked finite.
CASES = {
    "1x320x320 unpadded": ((1, 320, 320), [(320, 320)]),
    "2x320x416 right padding": ((2, 320, 416), [(320, 416), (320, 300)]),
    "3x384x320 bottom and full padding": ((3, 384, 320), [(384, 320), (290, 320), (0, 0)]),
}
# The fp16 file against eager fp16 (CPU), at the first case; 4x what was measured (2.3e-3, 1.1e-4).
FP16_TOLERANCE = {"pred_logits": 1e-2, "pred_boxes": 5e-4}
CLI_EXPORT = ("r50-dc5", "fp16")  # the file (and engine) made by the export command


def case_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape, sizes = CASES[name]
    images, _ = example_inputs(shape)
    mask = torch.ones(shape, dtype=torch.bool)
    for index, (height, width) in enumerate(sizes):
        mask[index, :height, :width] = False
    return images.masked_fill(mask[:, None], 0.0), mask


def with_content(name: str) -> torch.Tensor:
    """The images of a case that are not all padding: the ones eager results exist for."""
    _, mask = case_inputs(name)
    return ~mask.flatten(1).all(dim=1)


def compared(outputs: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {key: value[with_content(name)] for key, value in outputs.items()}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``anchordetr-trt argv`` in this process (usable in any fixture)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def cli_export(folder, timings):
    """r50-dc5 fp16 exported and built by ``anchordetr-trt export``: (exit code, stdout, stderr)."""
    variant, precision = CLI_EXPORT
    stem = folder / f"{variant}-{precision}"
    argv = ["export", "--random-weights", "--variant", variant, "--precision", precision]
    start = time.perf_counter()
    result = run_cli([*argv, "--onnx", f"{stem}.onnx", "--engine", f"{stem}.engine"])
    timings[f"{variant} {precision} export + build (command line)"] = time.perf_counter() - start
    return result


@pytest.fixture(scope="module")
def onnx_file(folder, timings, request):
    """onnx_file(variant, precision) -> the path of its ONNX (default range, seed-0 random weights)."""
    files = {}

    def get(variant: str, precision: str) -> Path:
        if (variant, precision) not in files:
            path = folder / f"{variant}-{precision}.onnx"
            if (variant, precision) == CLI_EXPORT:
                code, _, err = request.getfixturevalue("cli_export")
                assert code == 0, err
            else:
                start = time.perf_counter()
                at.export_onnx(random_model(variant), path, precision=precision, **RANGE)
                timings[f"{variant} {precision} export"] = time.perf_counter() - start
            files[variant, precision] = path
        return files[variant, precision]

    return get


@pytest.fixture(scope="module")
def session():
    """session(path) -> an onnxruntime CPU session of the file (one per file)."""
    import onnxruntime as ort

    sessions = {}

    def get(path: Path):
        if path not in sessions:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # fp16 nodes without CPU kernels are cast to fp32: said once, here
            sessions[path] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sessions[path]

    return get


@pytest.fixture(scope="module")
def eager_fp32():
    """eager_fp32(variant) -> {case: outputs} of the eager fp32 model (its reference ops on the CPU), for
    the case's images that are not all padding."""
    outputs = {}

    def get(variant: str) -> dict[str, dict[str, torch.Tensor]]:
        if variant not in outputs:
            model = random_model(variant)
            with torch.no_grad():
                outputs[variant] = {
                    name: model(*(t[with_content(name)] for t in case_inputs(name))) for name in CASES
                }
        return outputs[variant]

    return get


def run_onnx(session, name: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    images, mask = case_inputs(name)
    values = session.run(None, {"images": images.to(dtype).numpy(), "mask": mask.numpy()})
    return dict(zip(("pred_logits", "pred_boxes"), map(torch.from_numpy, values), strict=True))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        key: (a[key].float() - b[key].float()).abs().max().item() for key in ("pred_logits", "pred_boxes")
    }


def print_table(capsys, title: str, diffs: dict[str, dict[str, float]]) -> None:
    """Print max abs differences in the test run's output (shown without -s too)."""
    with capsys.disabled():
        print(f"\n{title}, max abs diff:")
        for label, diff in diffs.items():
            print(f"  {label:<50} logits {diff['pred_logits']:.2e}  boxes {diff['pred_boxes']:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_file_has_the_documented_interface(onnx_file, variant, precision):
    """Inputs, outputs, dtypes and dynamic dims as documented; standard ONNX ops only (the reference
    ops lower to LayerNormalization, Softmax, ...); weights inside; conventions in metadata_props."""
    import onnx

    path = onnx_file(variant, precision)
    model = onnx.load(str(path))
    assert model.producer_name == PRODUCER
    assert written_by_us(path)  # a second export to this path may replace it
    assert {op.domain: op.version for op in model.opset_import}[""] == OPSET >= 17
    elem = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT

    def signature(values):
        return {
            v.name: (
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    inputs, outputs = signature(model.graph.input), signature(model.graph.output)
    assert inputs == {
        "images": (elem, ["batch", 3, "32*height_blocks", "32*width_blocks"]),
        "mask": (onnx.TensorProto.BOOL, ["batch", "32*height_blocks", "32*width_blocks"]),
    }
    assert outputs == {
        "pred_logits": (onnx.TensorProto.FLOAT, ["batch", 900, 91]),
        "pred_boxes": (onnx.TensorProto.FLOAT, ["batch", 900, 4]),
    }
    ops = {node.op_type for node in model.graph.node}
    assert {node.domain for node in model.graph.node} <= {""}, "custom-domain nodes in the graph"
    assert {"LayerNormalization", "Softmax", "Conv", "MatMul", "Where"} <= ops
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not Path(f"{path}.data").exists()
    props = {p.key: p.value for p in model.metadata_props}
    assert props["variant"] == variant and props["precision"] == precision
    assert props["padding_multiple"] == "32"
    assert [json.loads(props[f"{k}_shape"]) for k in ("min", "opt", "max")] == [
        list(v) for v in RANGE.values()
    ]
    normalization = json.loads(props["normalization"])
    assert normalization["mean"] == [0.485, 0.456, 0.406] and normalization["std"] == [0.229, 0.224, 0.225]
    assert "pred_boxes [B, 900, 4] float32 (cx, cy, w, h" in props["outputs"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_onnx_matches_eager_fp32_in_onnxruntime(onnx_file, session, eager_fp32, variant, capsys):
    """At three shapes that differ in batch, aspect and padding, one image all padding: logits within
    1e-4 and boxes within 1e-5 of eager fp32, and finite everywhere (the table is printed)."""
    ort_session = session(onnx_file(variant, "fp32"))
    diffs = {}
    for name in CASES:
        got = run_onnx(ort_session, name, torch.float32)
        assert all(torch.isfinite(v).all() for v in got.values()), f"{name}: NaN or inf from the ONNX"
        diffs[name] = max_diff(compared(got, name), eager_fp32(variant)[name])
    print_table(capsys, f"{variant} fp32 ONNX (onnxruntime CPU) vs eager fp32", diffs)
    for name, diff in diffs.items():
        assert diff["pred_logits"] <= 1e-4 and diff["pred_boxes"] <= 1e-5, f"{name}: {diff}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_onnx_parity_reported(onnx_file, session, eager_fp32, variant, capsys):
    """The fp16 file in onnxruntime (CPU: it runs fp16 nodes without a CPU kernel in fp32) against
    eager fp16 at the first case, and against eager fp32 at every case; the table is printed."""
    ort_session = session(onnx_file(variant, "fp16"))
    first = next(iter(CASES))
    model = random_model(variant).set_precision(torch.float16)
    images, mask = case_inputs(first)
    with torch.no_grad():
        eager_fp16 = model(images.half(), mask)
    rows = [(f"{first} vs eager fp16", max_diff(run_onnx(ort_session, first, torch.float16), eager_fp16))]
    for name in CASES:
        got = run_onnx(ort_session, name, torch.float16)
        assert all(torch.isfinite(v).all() for v in got.values()), f"{name}: NaN or inf from the fp16 ONNX"
        rows.append((f"{name} vs eager fp32", max_diff(compared(got, name), eager_fp32(variant)[name])))
    print_table(capsys, f"{variant} fp16 ONNX (onnxruntime CPU)", dict(rows))
    for key, tolerance in FP16_TOLERANCE.items():
        assert rows[0][1][key] <= tolerance, rows[0]


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_tensorrt_rtx_builds_an_engine_for_the_whole_range(onnx_file, folder, timings, variant, precision):
    """A TensorRT-RTX engine of each file with one profile (1,3,320,320)..(8,3,1344,1344), read back
    from the parsed network and the builder's profile (the engine itself is not deserialized: that
    needs a CUDA driver). r50-dc5 fp16's was built by the export command and is read from its record."""
    path = onnx_file(variant, precision)
    engine = folder / f"{variant}-{precision}.engine"
    if (variant, precision) == CLI_EXPORT:
        record = json.loads(Path(f"{engine}.json").read_text())
    else:
        build = at.build_engine(path, engine, **RANGE)
        timings[f"{variant} {precision} engine build"] = build.build_s
        record = json.loads(Path(f"{engine}.json").read_text())
        assert record == json.loads(json.dumps(build.to_json()))
    assert record["builder"].startswith("TensorRT-RTX 1.")
    assert record["targets"].startswith("compute capability 8.0, 8.6, 8.9 and 12.x")
    assert record["strongly_typed"] is True
    image_dtype = {"fp32": "float32", "fp16": "float16"}[precision]
    assert record["inputs"] == {
        "images": {"dtype": image_dtype, "shape": [-1, 3, -1, -1]},
        "mask": {"dtype": "bool", "shape": [-1, -1, -1]},
    }
    assert record["outputs"] == {
        "pred_logits": {"dtype": "float32", "shape": [-1, 900, 91]},
        "pred_boxes": {"dtype": "float32", "shape": [-1, 900, 4]},
    }
    assert record["profile"] == PROFILE
    data = engine.read_bytes()
    assert data.startswith(RTX_MAGIC) and len(data) == record["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    check_engine_paths(engine, "engine")  # ours and unchanged: a rebuild may replace it


@pytest.mark.slow
def test_export_command_writes_the_onnx_and_the_engine(cli_export, folder, timings, capsys):
    code, out, err = cli_export
    assert code == 0, err
    assert "wrote " in out and "r50-dc5-fp16.onnx (fp16, batch 1..8" in out
    assert "with TensorRT-RTX 1." in out and "it runs on compute capability 8.0, 8.6, 8.9 and 12.x" in out
    assert "deterministic random weights" in err
    check_replaceable(folder / "r50-dc5-fp16.onnx", written_by_us, "onnx")  # a rerun may replace it
    with capsys.disabled():
        print("\nmeasured here: " + "; ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


# Quick checks: no export needed.


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "bf16"], "invalid choice: 'bf16'"),
        (["--min-shape", "1,800,800", "--opt-shape", "1,640,640"], "min <= opt <= max"),
        (["--engine", "{tmp}/same.onnx"], "must be three different files"),
    ],
)
def test_export_command_refuses_bad_flags_before_any_work(tmp_path, argv, message):
    base = ["export", "--random-weights", "--onnx", f"{tmp_path}/same.onnx"]
    code, _, err = run_cli([*base, *(a.format(tmp=tmp_path) for a in argv)])
    assert code == 2 and message in err, err
    assert not any(tmp_path.iterdir())


def test_export_command_fits_its_default_opt_shape_into_the_range_given(tmp_path, monkeypatch):
    # A range without --opt-shape that excludes the default 1,800,800 is served, as compile() serves it.
    exported = {}
    monkeypatch.setattr(
        "anchordetr_trt.onnx_export.export_onnx", lambda model, path, **kwargs: exported.update(kwargs)
    )
    argv = ["export", "--random-weights", "--variant", "r50-c5", "--onnx", f"{tmp_path}/m.onnx"]
    code, _, err = run_cli([*argv, "--min-shape", "1,64,64", "--max-shape", "2,320,320"])
    assert code == 0, err
    assert exported == {
        "precision": "fp16",
        "min_shape": (1, 64, 64),
        "opt_shape": (1, 320, 320),
        "max_shape": (2, 320, 320),
    }


@pytest.mark.parametrize("flag", ["--onnx", "--engine", "--engine record"])
def test_export_command_never_replaces_a_users_file(tmp_path, flag, monkeypatch):
    user_file = tmp_path / ("model.engine.json" if flag == "--engine record" else f"model.{flag[2:]}")
    user_file.write_text("the user's")
    argv = [
        "export",
        "--random-weights",
        "--onnx",
        f"{tmp_path}/model.onnx",
        "--engine",
        f"{tmp_path}/model.engine",
    ]
    monkeypatch.setattr(onnx_export, "model_from", _export_started)
    code, _, err = run_cli(argv)
    assert code == 2 and "exists and anchordetr-trt did not write it" in err and str(user_file) in err, err
    assert user_file.read_text() == "the user's" and len(list(tmp_path.iterdir())) == 1


def test_an_engine_is_replaced_only_while_unchanged_since_its_record(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(RTX_MAGIC + b"engine bytes")
    record = {
        "tool": "anchordetr-trt build_engine",
        "size_bytes": 16,
        "sha256": hashlib.sha256(engine.read_bytes()).hexdigest(),
    }
    Path(f"{engine}.json").write_text(json.dumps(record))
    check_engine_paths(engine, "engine")
    engine.write_bytes(RTX_MAGIC + b"ENGINE BYTES")  # same size, other bytes: changed since
    with pytest.raises(at.InputError, match="did not write it \\(or it changed since\\)"):
        check_engine_paths(engine, "engine")


def _export_started(*args):  # stands in for export_onnx's first step after its checks
    raise AssertionError("the export started before its paths were checked")


def test_export_onnx_refuses_bf16_and_folders(tmp_path, monkeypatch):
    with pytest.raises(at.InputError, match="precision='bf16' cannot be exported to ONNX"):
        at.export_onnx(random_model("r50-c5"), tmp_path / "m.onnx", precision="bf16")
    with pytest.raises(at.InputError, match="is a folder"):
        at.export_onnx(random_model("r50-c5"), tmp_path, precision="fp32")
    afile = tmp_path / "afile"
    afile.write_text("the user's")
    monkeypatch.setattr(onnx_export, "model_from", _export_started)
    with pytest.raises(at.InputError, match=f"{afile} is a file, not a folder: pass a path in a folder"):
        at.export_onnx(random_model("r50-c5"), afile / "sub" / "m.onnx", precision="fp32")
    assert afile.read_text() == "the user's"


def small_onnx(path: Path, inputs=("images", "mask"), props: dict[str, str] | None = None) -> Path:
    """A two-input identity graph (not AnchorDETR) with ``props`` as metadata_props."""
    import onnx
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 3]) for n in inputs]
    outs = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["b", 3]) for i in range(len(inputs))]
    nodes = [helper.make_node("Identity", [n], [f"out{i}"]) for i, n in enumerate(inputs)]
    model = helper.make_model(
        helper.make_graph(nodes, "g", values, outs), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.helper.set_model_props(model, props or {})
    onnx.save(model, str(path))
    return path


def test_an_onnx_is_replaced_only_while_unchanged_since_the_export(tmp_path):
    """``written_by_us``: this package's producer_name and a content digest that still matches; an
    edit saved with onnx.save keeps the producer_name, not the digest."""
    import onnx

    path = small_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.producer_name = PRODUCER
    onnx.save(model, str(path))  # this package's producer_name without a digest: an edit, or an older export
    assert not written_by_us(path)
    model.metadata_props.add(key=CONTENT_DIGEST, value=hashlib.sha256(model.SerializeToString()).hexdigest())
    onnx.save(model, str(path))
    assert written_by_us(path)
    model.graph.node[0].name = "edited"
    onnx.save(model, str(path))
    assert not written_by_us(path)
    with pytest.raises(at.InputError, match="did not write it \\(or it changed since\\)"):
        check_replaceable(path, written_by_us, "path='m.onnx'")


def test_build_engine_refuses_a_range_past_the_export(tmp_path):
    props = metadata("r50-c5", "fp16", ((1, 320, 320), (1, 640, 640), (4, 800, 800)), 900)
    path = small_onnx(tmp_path / "m.onnx", props=props)
    with pytest.raises(
        at.InputError, match=r"reaches past .* exported range \(1, 320, 320\)..\(4, 800, 800\)"
    ):
        at.build_engine(path, tmp_path / "m.engine", **RANGE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_engine_refuses_an_onnx_that_is_not_anchordetr(tmp_path):
    path = small_onnx(tmp_path / "m.onnx", inputs=("input",))
    with pytest.raises(at.InputError, match=r"has inputs \['input'\] .* pass an ONNX that export_onnx wrote"):
        at.build_engine(path, tmp_path / "m.engine", builder="tensorrt-rtx")


def test_build_engine_without_a_builder_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("tensorrt") else find_spec(name, *a),
    )
    with pytest.raises(
        at.BackendUnavailableError, match=r"neither is installed: pip install 'anchordetr_trt\[onnx\]'"
    ):
        choose_builder("auto")


@pytest.mark.no_gpu
def test_engines_need_a_gpu_to_run_and_tensorrt_to_build_on_one(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(RTX_MAGIC)
    for device in ("cuda", "cpu"):  # no fix to suggest here: device='cpu' cannot run an engine either
        with pytest.raises(at.BackendUnavailableError, match=r"and no CUDA GPU is visible here$"):
            at.load_engine(engine, device=device)
    with pytest.raises(at.BackendUnavailableError, match="TensorRT builds engines on a CUDA GPU"):
        choose_builder("tensorrt")


@pytest.mark.parametrize(
    ("builder", "capability", "warned"),
    [
        ("tensorrt-rtx", (9, 0), True),  # H100, H200
        ("tensorrt-rtx", (8, 6), False),
        ("tensorrt-rtx", (12, 0), False),
        ("tensorrt", (9, 0), False),  # TensorRT builds for the GPU it builds on
    ],
)
def test_a_tensorrt_rtx_engine_for_a_gpu_it_cannot_run_on_is_named_with_the_fix(
    monkeypatch, builder, capability, warned
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    message = rtx_mismatch(builder)
    assert (message is not None) == warned
    if warned:
        assert f"compute capability {capability[0]}.{capability[1]}" in message
        assert "pip install tensorrt" in message and "builder='tensorrt'" in message

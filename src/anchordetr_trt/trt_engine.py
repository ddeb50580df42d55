"""A serialized TensorRT engine from the ONNX of ``export_onnx`` (``build_engine``), and the engine
run from torch (``load_engine``).

``build_engine`` uses TensorRT where it is installed and a CUDA GPU is visible (the engine then runs
on GPUs like the one it was built on), else TensorRT-RTX, whose builder runs on the CPU and whose
engines run on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x (its default targets; no 9.0,
the H100 and H200). Both build strongly typed networks: FP16 comes from the ONNX's own dtypes.
One optimization profile covers the whole range. Beside the engine, ``<engine>.json`` records how
it was built (builder, targets, I/O, profile) and the engine's digest: engines carry no metadata,
and this is how a later build knows that the file is one it may replace.

``load_engine`` returns the package's ``CompiledAnchorDETR`` (the same input checks, padding and
outputs as every backend) around ``backends.engine``, which runs the engine with the TensorRT
Python runtime on torch tensors. It needs a CUDA GPU that the engine was built for.
"""

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from .backends.engine import torch_dtype
from .cache import check_replaceable, write_whole
from .errors import BackendUnavailableError, InputError, listed
from .model import INPUTS, OUTPUTS
from .onnx_export import exported_range
from .spec import CompileSpec, Shape, check_shape_range, padded_shape

if TYPE_CHECKING:
    from .compiled import CompiledAnchorDETR

logger = logging.getLogger(__name__)

BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
# TensorRT-RTX with no compute capability set builds for these (its documentation, "CPU-only AOT");
# a minor of None stands for every minor.
RTX_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (12, None))
_RTX_NAMES = [f"{major}.{'x' if minor is None else minor}" for major, minor in RTX_CAPABILITIES]
RTX_DEFAULT_TARGETS = (
    f"compute capability {', '.join(_RTX_NAMES[:-1])} and {_RTX_NAMES[-1]} (TensorRT-RTX's default targets)"
)
RTX_MAGIC = b"vtrt"  # the first bytes of a TensorRT-RTX engine (measured on 1.7.1)
_INSTALL = {
    "tensorrt": "pip install tensorrt (builds and runs on a CUDA GPU)",
    "tensorrt-rtx": "pip install 'anchordetr_trt[onnx]' (TensorRT-RTX; builds on the CPU)",
}


@dataclass(frozen=True)
class EngineBuild:
    """What ``build_engine`` built: ``builder`` (library and version), the GPUs it ``targets``, the
    network's ``inputs`` and ``outputs`` as parsed (name -> dtype and shape, -1 = dynamic), the
    optimization ``profile`` read back from the builder (input -> min, opt, max), the engine's
    ``size_bytes`` and ``sha256``, and ``build_s`` seconds."""

    engine: str
    onnx: str
    builder: str
    targets: str
    strongly_typed: bool
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    profile: dict[str, dict[str, list[int]]]
    size_bytes: int
    sha256: str
    build_s: float

    def to_json(self) -> dict[str, Any]:
        return {"tool": "anchordetr-trt build_engine", **asdict(self)}


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    min_shape: Shape = (1, 320, 320),
    opt_shape: Shape = (1, 800, 800),
    max_shape: Shape = (8, 1344, 1344),
    builder: str = "auto",
) -> EngineBuild:
    """Build a serialized engine of the ONNX at ``onnx_path`` (from ``export_onnx``) with one
    optimization profile for (batch, height, width) in [min_shape, max_shape], tuned for
    ``opt_shape``; heights and widths are rounded up to multiples of 32 as the ONNX requires.
    Writes ``engine_path`` and ``<engine_path>.json`` (see ``EngineBuild``), each whole or not at
    all; an existing file there is replaced only if this function wrote it (InputError otherwise,
    before any work). ``builder``: "auto" (TensorRT where it can build here, else TensorRT-RTX),
    "tensorrt" or "tensorrt-rtx".
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise InputError(
            f"onnx_path={str(onnx_path)!r} is not a file: pass the ONNX that export_onnx wrote",
            argument="onnx_path",
        )
    check_engine_paths(engine_path, f"engine_path={str(engine_path)!r}")
    check_shape_range(min_shape, max_shape, opt_shape)
    shapes = tuple(padded_shape(tuple(s)) for s in (min_shape, opt_shape, max_shape))
    _check_within_export(onnx_path, shapes)
    name, trt = choose_builder(builder)
    if mismatch := rtx_mismatch(name):
        logger.warning("build_engine: %s", mismatch)
    version = f"{_NAMES[name]} {trt.__version__}"
    log = _log(trt)
    log.errors.clear()
    start = time.perf_counter()
    network_builder = trt.Builder(log)
    network = network_builder.create_network(_strongly_typed_flag(trt))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or log.errors
        raise InputError(
            f"{version} cannot parse {onnx_path} ({listed(errors, 2)}): pass an ONNX that export_onnx wrote"
        )
    inputs, outputs = _tensors(network, "input"), _tensors(network, "output")
    if list(inputs) != list(INPUTS) or list(outputs) != list(OUTPUTS):
        raise InputError(
            f"{onnx_path} has inputs {list(inputs)} and outputs {list(outputs)}, not {list(INPUTS)} and "
            f"{list(OUTPUTS)}: pass an ONNX that export_onnx wrote"
        )
    config = network_builder.create_builder_config()
    profile = network_builder.create_optimization_profile()
    for tensor, dims in zip(INPUTS, (_image_dims, _mask_dims), strict=True):
        profile.set_shape(tensor, *(dims(shape) for shape in shapes))
    config.add_optimization_profile(profile)
    serialized = network_builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(
            f"{version} could not build an engine of {onnx_path} for {shapes[0]}..{shapes[2]} "
            f"({listed(log.errors, 2) or 'no error logged'}): try a narrower range (min_shape, max_shape)"
        )
    data = bytes(serialized)
    build = EngineBuild(
        engine=str(engine_path),
        onnx=str(onnx_path),
        builder=version,
        targets=_targets(name, config),
        strongly_typed=bool(network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)),
        inputs=inputs,
        outputs=outputs,
        profile={
            t: dict(zip(("min", "opt", "max"), map(list, profile.get_shape(t)), strict=True)) for t in INPUTS
        },
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        build_s=time.perf_counter() - start,
    )
    write_whole(engine_path, lambda partial: partial.write_bytes(data))
    record = json.dumps(build.to_json(), indent=1)
    write_whole(_record_path(engine_path), lambda partial: partial.write_text(record))
    logger.debug("engine: %s built %s in %.1f s (%s)", version, engine_path, build.build_s, build.targets)
    return build


def check_engine_paths(engine_path: Path, label: str) -> None:
    """InputError (``label`` names the path) unless the engine and its record ``<engine>.json`` are
    new or were written by ``build_engine``, unchanged since: a user's file is never replaced."""
    record = _record_path(engine_path)
    check_replaceable(engine_path, _engine_written_by_us, label)
    check_replaceable(record, _record_written_by_us, f"{label}: its record {record}")


def load_engine(path: str | os.PathLike, *, device: str | torch.device = "cuda") -> "CompiledAnchorDETR":
    """The engine at ``path`` (from ``build_engine`` or trtexec) as a ``CompiledAnchorDETR`` on the
    CUDA ``device``: its shape range and precision are the engine's optimization profile and input
    dtype. TensorRT-RTX engines are run with ``tensorrt_rtx``, others with ``tensorrt``."""
    from .backends.engine import EngineRunner
    from .compiled import CompiledAnchorDETR
    from .devices import check_device

    path = Path(path)
    if not path.is_file():
        raise InputError(f"path={str(path)!r} is not a file: pass an engine that build_engine wrote")
    if not torch.cuda.is_available():  # before check_device, whose fix (device='cpu') cannot run engines
        raise BackendUnavailableError(
            "load_engine runs TensorRT engines on a CUDA GPU, and no CUDA GPU is visible here"
        )
    device = check_device(device)
    if device.type != "cuda":
        raise BackendUnavailableError(f"load_engine runs TensorRT engines on a CUDA GPU, not on {device}")
    data = path.read_bytes()
    name = "tensorrt-rtx" if data.startswith(RTX_MAGIC) else "tensorrt"
    trt = _import(name)
    runner = EngineRunner(trt, data, _log(trt), device=device)
    images = runner.input_profile("images")
    precision = {torch.float16: "fp16", torch.float32: "fp32"}.get(runner.dtype("images"))
    if precision is None:
        raise InputError(
            f"the engine takes {runner.dtype('images')} images: load_engine runs fp16 or fp32 engines"
        )
    spec = CompileSpec(
        precision=precision,
        device=device,
        **{
            f"{k}_shape": (shape[0], shape[2], shape[3])
            for k, shape in zip(("min", "opt", "max"), images, strict=True)
        },
    )
    return CompiledAnchorDETR(runner, backend="engine", spec=spec)


def choose_builder(requested: str) -> tuple[str, ModuleType]:
    """(name, module) of the builder for ``requested``; BackendUnavailableError naming the fix."""
    if requested not in BUILDERS:
        raise InputError(f"builder={requested!r} is not one of {', '.join(BUILDERS)}", argument="builder")
    installed = {name: importlib.util.find_spec(module) is not None for name, module in _MODULES.items()}
    if requested == "auto":
        # TensorRT builds on a GPU only: without one, TensorRT-RTX (CPU) is the one that can.
        if installed["tensorrt"] and (torch.cuda.is_available() or not installed["tensorrt-rtx"]):
            requested = "tensorrt"
        elif installed["tensorrt-rtx"]:
            requested = "tensorrt-rtx"
        else:
            raise BackendUnavailableError(
                f"build_engine needs TensorRT or TensorRT-RTX and neither is installed: "
                f"{_INSTALL['tensorrt-rtx']}, or {_INSTALL['tensorrt']}"
            )
    if requested == "tensorrt" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "TensorRT builds engines on a CUDA GPU and none is visible: build on the GPU, or with "
            f"builder='tensorrt-rtx' here ({_INSTALL['tensorrt-rtx']})"
        )
    return requested, _import(requested)


def rtx_mismatch(builder: str) -> str | None:
    """Why an engine of ``builder`` will not run on the GPU visible here (TensorRT-RTX's targets leave
    out compute capability 9.0, the H100's and H200's, among others), naming the fix; None if it will,
    or if no GPU is visible."""
    if builder != "tensorrt-rtx" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    if any(major == rtx_major and rtx_minor in (minor, None) for rtx_major, rtx_minor in RTX_CAPABILITIES):
        return None
    return (
        f"the engine will not run on this GPU ({torch.cuda.get_device_name()}, compute capability "
        f"{major}.{minor}; TensorRT-RTX's engines run on {RTX_DEFAULT_TARGETS}): for this GPU, "
        f"{_INSTALL['tensorrt']} and build with builder='tensorrt'"
    )


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        raise BackendUnavailableError(f"{_NAMES[name]} is not installed: {_INSTALL[name]}") from None
    except Exception as error:  # a broken install can fail in many ways: say so in one line
        raise BackendUnavailableError(
            f"{_NAMES[name]} does not load ({type(error).__name__}: {error})"
        ) from None


@functools.cache
def _log(trt: ModuleType) -> Any:
    """The one logger of ``trt`` in this process (TensorRT keeps the first one it is given): errors
    are kept for the exception messages, everything else goes to this module's logger at debug."""

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(" ".join(str(message).split()))
            logger.debug("%s: %s", trt.__name__, message)

    return Log()


def _strongly_typed_flag(trt: ModuleType) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _tensors(network: Any, kind: str) -> dict[str, dict[str, Any]]:
    count = network.num_inputs if kind == "input" else network.num_outputs
    tensors = [network.get_input(i) if kind == "input" else network.get_output(i) for i in range(count)]
    return {
        t.name: {"dtype": str(torch_dtype(t.dtype)).removeprefix("torch."), "shape": list(t.shape)}
        for t in tensors
    }


def _image_dims(shape: Shape) -> tuple[int, int, int, int]:
    batch, height, width = shape
    return (batch, 3, height, width)


def _mask_dims(shape: Shape) -> tuple[int, int, int]:
    return tuple(shape)


def _targets(name: str, config: Any) -> str:
    if name == "tensorrt":
        major, minor = torch.cuda.get_device_capability()
        return f"GPUs like the one it was built on ({torch.cuda.get_device_name()}, compute capability {major}.{minor})"
    count = config.num_compute_capabilities
    if count == 0:
        return RTX_DEFAULT_TARGETS
    return "compute capability " + ", ".join(str(config.get_compute_capability(i)) for i in range(count))


def _check_within_export(onnx_path: Path, shapes: tuple[Shape, Shape, Shape]) -> None:
    """InputError if the profile reaches past the range the ONNX was exported for (its metadata)."""
    exported = exported_range(onnx_path)
    if exported is None:
        return
    low, high = exported
    for shape in shapes:
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            raise InputError(
                f"the engine's range {shapes[0]}..{shapes[2]} (heights and widths rounded up to 32) reaches "
                f"past {onnx_path}'s exported range {low}..{high}: pass min_shape and max_shape within it, "
                "or export the ONNX for a wider range"
            )


def _record_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def _read_record(engine_path: Path) -> Mapping[str, Any] | None:
    try:
        record = json.loads(_record_path(engine_path).read_text())
    except (OSError, ValueError):
        return None
    return (
        record
        if isinstance(record, dict) and str(record.get("tool", "")).startswith("anchordetr-trt")
        else None
    )


def _record_written_by_us(record_path: Path) -> bool:
    return _read_record(record_path.with_name(record_path.name.removesuffix(".json"))) is not None


def _engine_written_by_us(engine_path: Path) -> bool:
    """Whether ``engine_path`` holds the bytes that build_engine recorded in its ``<engine>.json``."""
    record = _read_record(engine_path)
    if record is None or record.get("size_bytes") != engine_path.stat().st_size:
        return False
    digest = hashlib.sha256()
    with engine_path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() == record.get("sha256")

"""The "tensorrt" backend: ``torch.export`` with dynamic batch, height and width, then Torch-TensorRT
(dynamo) with this package's converters, which lower the ``anchordetr`` ops to TensorRT plugins running
the ops' Triton kernels (compiled ahead of time into the engine where TensorRT allows).

The engine is strongly typed: the model is cast to the requested precision before export and
TensorRT keeps the graph's dtypes (the plugins accumulate in float32). Built modules are saved with
``torch_tensorrt.save`` under ``cache_dir``, keyed by the weights, shape range, precision, library
versions and GPU. tensorrt and torch_tensorrt are imported inside functions only: this module, and
``status``, work where they are missing.

Versions: Torch-TensorRT 2.11 to 2.14 are accepted, each with the torch of its own minor version (its
wheel requires torch X.Y; pyproject.toml of pytorch/TensorRT at v2.11.0, v2.12.0, v2.13.0 and main,
2.14.0a0). Everything else is refused by ``status`` with the fix. The calls below need no
per-version arguments across that range (read at those tags): ``dynamo.compile`` keeps
``arg_inputs``, ``device`` and ``min_block_size``; FP16 comes from the half model and inputs, since
2.11 and 2.12 default to ``use_explicit_typing=True`` and 2.13 removed ``enabled_precisions`` and
``use_explicit_typing`` (pytorch/TensorRT#4195: passed there, they would land in ``**kwargs`` and be
ignored), so neither is passed; ``torch_tensorrt.save`` keeps ``output_format="exported_program"``
and ``retrace=False`` (the graph serialized as compiled, without re-export) with the same meaning;
``dynamo_tensorrt_converter`` keeps ``capability_validator``, ``priority`` and
``supports_dynamic_shapes``.
"""

import functools
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..cache import source_digest, write_whole
from ..environment import installed_version
from ..errors import BackendUnavailableError
from ..export import export_model
from ..model import OUTPUTS
from ..spec import CompileSpec, Shape

logger = logging.getLogger(__name__)

_LIBRARIES = ("torch", "torch_tensorrt", "tensorrt", "triton", "anchordetr_trt")


PADDED = True
PRECISIONS = ("fp16", "fp32")  # the plugins' kernels are built for these
# Torch-TensorRT minor versions whose plugin, compile and save APIs this backend was checked against.
SUPPORTED_TORCH_TENSORRT = ((2, 11), (2, 14))
_SUPPORTED = "{}.{} to {}.{}".format(*SUPPORTED_TORCH_TENSORRT[0], *SUPPORTED_TORCH_TENSORRT[1])


@functools.cache
def _import_status() -> tuple[bool, str]:
    missing = [name for name in ("torch_tensorrt", "tensorrt") if importlib.util.find_spec(name) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed: {_install_fix(str(torch.__version__))}"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (Torch-TensorRT builds engines on a GPU)"
    try:
        import tensorrt
        import tensorrt.plugin  # the plugin API (TensorRT >= 10.7)
        import torch_tensorrt
    except Exception as error:  # a broken install can fail in many ways: report it, never crash
        return False, f"TensorRT does not load ({type(error).__name__}: {error})"
    problem = version_problem(str(torch_tensorrt.__version__), str(torch.__version__))
    if problem is not None:
        return False, problem
    return True, f"Torch-TensorRT {torch_tensorrt.__version__} with TensorRT {tensorrt.__version__}"


def version_problem(torch_tensorrt_version: str, torch_version: str) -> str | None:
    """Why this Torch-TensorRT cannot serve the backend next to this torch (one line with the fix),
    or None when the pair is supported: Torch-TensorRT 2.11 to 2.14, of torch's own minor version."""
    low, high = SUPPORTED_TORCH_TENSORRT
    trt_minor, torch_minor = _minor(torch_tensorrt_version), _minor(torch_version)
    fix = _install_fix(torch_version)
    if trt_minor is None or not low <= trt_minor <= high:
        installed = f"Torch-TensorRT {torch_tensorrt_version} is installed"
        return f"{installed}; backend='tensorrt' supports {_SUPPORTED}: {fix}"
    if trt_minor != torch_minor:
        return (
            f"Torch-TensorRT {torch_tensorrt_version} is built for torch {trt_minor[0]}.{trt_minor[1]}, "
            f"but torch {torch_version} is installed: {fix}"
        )
    return None


def _install_fix(torch_version: str) -> str:
    """How to install the Torch-TensorRT that serves this torch: the release of its own minor version,
    named exactly (``anchordetr_trt[tensorrt]`` would let pip replace torch with the newest release's),
    or a supported pair of both."""
    low, high = SUPPORTED_TORCH_TENSORRT
    torch_minor = _minor(torch_version)
    if torch_minor is not None and low <= torch_minor <= high:
        release = f"{torch_minor[0]}.{torch_minor[1]}"
        return f"pip install 'torch-tensorrt=={release}.*' (the release for torch {torch_version})"
    return f"install torch and torch-tensorrt of one minor version from {_SUPPORTED}"


def _minor(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as "2.13.0+cu130" or "2.14.0.dev20260801"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


# NVIDIA/TensorRT#4849 (open): an engine with AOT plugins keeps GPU memory (CUDA modules) for every change
# of input shape, also after the engine is destroyed; reported on TensorRT 11.1 and 11.2.1, no fixed
# release known. This engine has an AOT plugin in every transformer layer, and its padded H and W vary.
_AOT_PLUGIN_LEAK = ((11, 1), "NVIDIA/TensorRT#4849")


def known_issues(tensorrt_version: str) -> list[str]:
    """Upstream problems that affect this backend with TensorRT ``tensorrt_version``, one line each."""
    since, issue = _AOT_PLUGIN_LEAK
    version = _minor(tensorrt_version)
    if version is not None and version >= since:
        return [
            f"TensorRT {tensorrt_version}: GPU memory grows with each new input shape while an engine with "
            f"AOT plugins runs ({issue}, open; reported on 11.1 and 11.2.1): in a long-running service, feed "
            "few distinct shapes (a fixed opt_shape-sized batch), or use TensorRT 10.15 with Torch-TensorRT 2.11"
        ]
    return []


def status(device: torch.device) -> tuple[bool, str]:
    """(whether the tensorrt backend can run on ``device`` here, why or why not)."""
    available, reason = _import_status()
    if available and device.type != "cuda":
        return False, f"needs a CUDA GPU (device is {device})"
    return available, reason


def warn_known_issues() -> None:
    """Log a warning for each of ``known_issues`` of the installed TensorRT."""
    import tensorrt

    for issue in known_issues(str(tensorrt.__version__)):
        logger.warning("tensorrt: %s", issue)


def build(model: nn.Module, spec: CompileSpec) -> nn.Module:
    """Build (or load from ``spec.cache_dir``) a TensorRT module of ``model``, an AnchorDETR whose
    frozen batch norms are folded, for ``spec``'s padded shape range. ``spec.precision`` is one of
    ``PRECISIONS``: ``backends.choose_backend`` refuses the others before this is called."""
    available, reason = status(spec.device)
    if not available:
        raise BackendUnavailableError(
            f"backend='tensorrt' cannot run here: {reason}: use backend='inductor' (a GPU with Triton) "
            "or backend='eager'"
        )
    import torch_tensorrt

    from anchordetr_trt.converters import register_converters

    register_converters()
    warn_known_issues()
    model = model.to(spec.device).set_precision(spec.dtype).eval().set_fused_ops(True)
    shapes = spec.padded_range
    path = None
    if spec.cache_dir is not None:
        key = cache_key(model, spec.precision, shapes, library_versions(spec.device))
        path = spec.cache_dir / "tensorrt" / f"{key}.pt2"
    runner = _load(path) if path is not None and path.exists() else None
    if runner is None:
        logger.info(
            "tensorrt: building an engine for %s..%s, tuned for %s (%s)",
            shapes[0],
            shapes[2],
            shapes[1],
            spec.precision,
        )
        exported = export_model(model, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2])
        runner = torch_tensorrt.dynamo.compile(
            exported, arg_inputs=engine_inputs(shapes, spec.dtype), device=spec.device, min_block_size=1
        )
        check_no_fallback(runner)
        if path is not None:
            _save(runner, path)
    return _OutputDict(runner)


class _OutputDict(nn.Module):
    """The engine's outputs as the model's dict (a flattened (logits, boxes) pair is accepted too)."""

    def __init__(self, engine: nn.Module):
        super().__init__()
        self.engine = engine

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        out = self.engine(images, mask)
        values = [out[key] for key in OUTPUTS] if isinstance(out, Mapping) else list(out)
        return dict(zip(OUTPUTS, values, strict=True))


def engine_inputs(shapes: tuple[Shape, Shape, Shape], dtype: torch.dtype) -> list[Any]:
    """Torch-TensorRT input specs of images [B, 3, H, W] and mask [B, H, W] for (min, opt, max) shapes."""
    from torch_tensorrt import Input

    image_shapes = {
        f"{k}_shape": (b, 3, h, w) for k, (b, h, w) in zip(("min", "opt", "max"), shapes, strict=True)
    }
    mask_shapes = {
        f"{k}_shape": (b, h, w) for k, (b, h, w) in zip(("min", "opt", "max"), shapes, strict=True)
    }
    return [
        Input(**image_shapes, dtype=dtype, name="images"),
        Input(**mask_shapes, dtype=torch.bool, name="mask"),
    ]


def ops_outside_tensorrt(module: nn.Module) -> list[str]:
    """Names of the ``anchordetr`` ops that a (compiled or exported) module runs in PyTorch, i.e. in
    FX graphs rather than in TensorRT engines."""
    from anchordetr_trt.converters.specs import op_name

    return sorted(
        name
        for graph_module in module.modules()
        if isinstance(graph_module, torch.fx.GraphModule)
        for node in graph_module.graph.nodes
        if node.op == "call_function" and (name := op_name(node.target)) is not None
    )


# The glue Torch-TensorRT leaves around its engines (input reshapes, output unpacking) is a few
# ops; more than this many compute ops in PyTorch means a subgraph fell back.
MAX_FALLBACK_OPS = 4
_GLUE = ("getitem", "sym_size", "view", "reshape", "_assert", "scalar_tensor", "alias")


def check_no_fallback(module: nn.Module) -> None:
    """Raise BackendUnavailableError if ``module`` (a compiled or exported module) runs an ``anchordetr``
    op, or more than MAX_FALLBACK_OPS other compute ops, in PyTorch rather than in TensorRT engines."""
    outside = ops_outside_tensorrt(module)
    compute = [
        str(node.target)
        for graph_module in module.modules()
        if isinstance(graph_module, torch.fx.GraphModule)
        for node in graph_module.graph.nodes
        if node.op == "call_function" and not any(glue in str(node.target) for glue in _GLUE)
    ]
    if outside or len(compute) > MAX_FALLBACK_OPS:
        raise BackendUnavailableError(
            f"Torch-TensorRT left {len(compute)} op(s) to PyTorch ({', '.join(sorted(set(compute))[:8])}), "
            f"anchordetr ops among them: {outside or 'none'}: this engine would not run as one; report it "
            "with `anchordetr-trt info`, and use backend='inductor' meanwhile"
        )


def cache_key(
    model: nn.Module, precision: str, shapes: tuple[Shape, ...], versions: Mapping[str, str]
) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes), config, precision, shape range and ``versions``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    settings = {
        "config": repr(getattr(model, "config", None)),
        "precision": precision,
        "shapes": [list(s) for s in shapes],
        "versions": dict(versions),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def library_versions(device: torch.device | None = None) -> dict[str, str]:
    """Versions of everything an engine depends on: libraries, the GPU, and the package's source (the
    model as well as the kernels and plugins: any of it can change without a version bump)."""
    versions = {name: _version(name) for name in _LIBRARIES}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        versions["gpu"] = f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"
    versions["source"] = source_digest()
    return versions


def _version(name: str) -> str:
    return installed_version(name.replace("_", "-")) or "missing"


def _load(path: Path) -> nn.Module | None:
    import torch_tensorrt

    logger.info("tensorrt: loading %s", path)
    try:
        return torch_tensorrt.load(str(path)).module()
    except Exception as error:  # a truncated or foreign file: rebuild rather than fail
        logger.warning("tensorrt: cannot load %s (%s: %s); rebuilding", path, type(error).__name__, error)
        return None


def _save(runner: nn.Module, path: Path) -> None:
    import torch_tensorrt

    try:  # a reader never sees a half-written file
        # retrace=False serializes the compiled graph as it is, symbolic shapes included.
        write_whole(
            path,
            lambda partial: torch_tensorrt.save(
                runner, str(partial), output_format="exported_program", retrace=False
            ),
        )
    except Exception as error:  # the engine was built and works: a cache that cannot be written is not fatal
        logger.warning(
            "tensorrt: could not save %s (%s: %s); the next process builds again",
            path,
            type(error).__name__,
            error,
        )
        return
    logger.info("tensorrt: saved %s", path)

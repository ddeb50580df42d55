"""anchordetr_trt: AnchorDETR checkpoints compiled to fast FP16 inference modules.

Public API: ``load_model``, ``compile`` (returning a ``CompiledAnchorDETR``), ``preprocess``, ``postprocess``, ``build_model``,
``AnchorDETRConfig``, ``VARIANTS``, the error classes, and the ONNX route: ``export_onnx``, ``build_engine``
and ``load_engine``.
"""

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # the one place of the version (pyproject.toml reads it)

# Name -> module. Imported on first use, so that `anchordetr-trt --help` does not wait for torch.
_EXPORTS = {
    "VARIANTS": "config",
    "AnchorDETR": "model",
    "AnchorDETRConfig": "config",
    "AnchorDETRError": "errors",
    "BackendUnavailableError": "errors",
    "CheckpointError": "errors",
    "CompiledAnchorDETR": "compiled",
    "InputError": "errors",
    "build_engine": "trt_engine",
    "build_model": "model",
    "compile": "compiled",
    "export_onnx": "onnx_export",
    "load_engine": "trt_engine",
    "load_model": "checkpoint",
    "postprocess": "transforms",
    "preprocess": "transforms",
}
__all__ = [
    "VARIANTS",
    "AnchorDETR",
    "AnchorDETRConfig",
    "AnchorDETRError",
    "BackendUnavailableError",
    "CheckpointError",
    "CompiledAnchorDETR",
    "InputError",
    "build_engine",
    "build_model",
    "compile",
    "export_onnx",
    "load_engine",
    "load_model",
    "postprocess",
    "preprocess",
]

if TYPE_CHECKING:
    from .checkpoint import load_model
    from .compiled import CompiledAnchorDETR, compile
    from .config import VARIANTS, AnchorDETRConfig
    from .errors import AnchorDETRError, BackendUnavailableError, CheckpointError, InputError
    from .model import AnchorDETR, build_model
    from .onnx_export import export_onnx
    from .transforms import postprocess, preprocess
    from .trt_engine import build_engine, load_engine


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _register_ops() -> None:
    try:
        importlib.import_module(".custom_ops", __name__)
    except Exception as error:  # a failed registration must not break `import torch`
        # Logged, not warned: under `-W error` a warning would become the exception it must not be.
        logging.getLogger(__name__).warning("torch.ops.anchordetr.* could not be registered: %s", error)


class _RegisterOpsAfterTorch(importlib.abc.MetaPathFinder):
    """Registers ``torch.ops.anchordetr.*`` right after torch is imported.

    So ``import anchordetr_trt`` registers the ops in either import order, yet does not import
    torch itself (3 s): ``anchordetr-trt --help`` never waits for it.
    """

    def find_spec(self, name, path, target=None):
        if name != "torch" or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)  # also keeps the lookup below from coming back here
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        torch_loader, finder = spec.loader, self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return torch_loader.create_module(spec)

            def exec_module(self, module):
                spec.loader = module.__loader__ = torch_loader  # torch sees its own loader
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)
                try:
                    torch_loader.exec_module(module)
                except BaseException:
                    sys.meta_path.insert(0, finder)  # a later, successful import still registers
                    raise
                _register_ops()

        spec.loader = _Loader()
        return spec


if "torch" in sys.modules:
    _register_ops()
else:
    sys.meta_path.insert(0, _RegisterOpsAfterTorch())

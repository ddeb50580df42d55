"""anchordetr_trt: AnchorDETR checkpoints compiled to fast FP16 inference modules.

Public API: ``load_model``, ``compile``, ``preprocess``, ``postprocess``, ``build_model``,
``AnchorDETRConfig``, ``VARIANTS`` and the error classes.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Name -> module. Imported on first use, so that `anchordetr-trt --help` does not wait for torch.
_EXPORTS = {
    "VARIANTS": "config",
    "AnchorDETR": "model",
    "AnchorDETRConfig": "config",
    "AnchorDETRError": "errors",
    "BackendUnavailableError": "errors",
    "CheckpointError": "errors",
    "InputError": "errors",
    "build_model": "model",
    "compile": "compile",
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
    "InputError",
    "build_model",
    "compile",
    "load_model",
    "postprocess",
    "preprocess",
]

if TYPE_CHECKING:
    from .checkpoint import load_model
    from .compile import compile
    from .config import VARIANTS, AnchorDETRConfig
    from .errors import AnchorDETRError, BackendUnavailableError, CheckpointError, InputError
    from .model import AnchorDETR, build_model
    from .transforms import postprocess, preprocess


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        # Importing the submodule `compile` binds it on the package; the function keeps the name.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

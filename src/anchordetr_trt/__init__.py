"""anchordetr_trt: AnchorDETR checkpoints compiled to fast FP16 inference modules.

Public API: ``load_model``, ``compile`` (returning a ``CompiledAnchorDETR``), ``preprocess``, ``postprocess``, ``build_model``,
``AnchorDETRConfig``, ``VARIANTS`` and the error classes.
"""

from .checkpoint import load_model
from .compiled import CompiledAnchorDETR, compile
from .config import VARIANTS, AnchorDETRConfig
from .errors import AnchorDETRError, BackendUnavailableError, CheckpointError, InputError
from .model import AnchorDETR, build_model
from .transforms import postprocess, preprocess

__all__ = [
    "VARIANTS",
    "AnchorDETR",
    "AnchorDETRConfig",
    "AnchorDETRError",
    "BackendUnavailableError",
    "CompiledAnchorDETR",
    "CheckpointError",
    "InputError",
    "build_model",
    "compile",
    "load_model",
    "postprocess",
    "preprocess",
]
__version__ = "0.1.0"

"""The fused ops of the seed's TensorRT plugins, as ``torch.ops.anchordetr.*`` with Triton kernels.

Importing this package (as ``import anchordetr_trt`` does) registers the ops. ``ops(fused, x)``
returns the namespace the model calls: ``reference`` (plain PyTorch, any device) or ``fused`` (the
custom ops, one graph node each). Both expose the same functions with the same signatures:
masked_softmax, layer_norm, add_bias_transpose, mask2pos, mask2posemb, rcda_aggregate, key_means,
self_attention, and four_channels, the inductor backend's stem input (``anchordetr_inductor``: no
TensorRT plugin).
"""

from types import ModuleType

from torch import Tensor

from anchordetr_trt.errors import BackendUnavailableError

from . import reference

try:
    from . import fused  # registers torch.ops.anchordetr.*
except ImportError as error:  # CPU-only torch builds may lack Triton; the reference ops still run
    fused, _fused_import_error = None, error


def ops(fused_ops: bool | None, x: Tensor) -> ModuleType:
    """The op namespace for a module whose ``fused_ops`` setting is ``fused_ops`` and whose input is
    ``x``: True -> fused, False -> reference, None -> fused when ``x`` is on CUDA, else reference."""
    if fused_ops is None:
        fused_ops = x.is_cuda
    if not fused_ops:
        return reference
    if fused is None:
        raise BackendUnavailableError(
            f"the fused ops need Triton, which does not import here ({_fused_import_error}): "
            "install triton, or call model.set_fused_ops(False)"
        )
    return fused

"""The fused ops of the seed's TensorRT plugins, as ``torch.ops.anchordetr.*`` with Triton kernels.

``ops(fused)`` returns the namespace the model calls: ``reference`` (plain PyTorch, any device) or
``fused`` (the custom ops, one graph node each). Both expose the same functions with the same
signatures: masked_softmax, layer_norm, add_bias_transpose, mask2pos, mask2posemb, rcda_aggregate.
"""

from types import ModuleType

from . import reference


def ops(fused: bool) -> ModuleType:
    if fused:
        from . import fused as fused_ops

        return fused_ops
    return reference

"""Torch-TensorRT (dynamo) converters: each ``anchordetr`` op node becomes one plugin layer.

The converter binds the node's arguments to the op's plugin (``specs.bind``), turns weights into
constants, and adds the plugin layer with its ahead-of-time kernel; a node whose dtypes no plugin kernel supports stays in PyTorch
(the capability validator says why in the log). Imported only when TensorRT is used.
"""

import functools
import logging
from collections.abc import Sequence
from typing import Any

import tensorrt.plugin as trtp
import torch
from torch.fx import Node
from torch_tensorrt.dynamo.conversion import ConverterPriority, dynamo_tensorrt_converter
from torch_tensorrt.dynamo.conversion.converter_utils import get_trt_tensor

from anchordetr_trt.errors import InputError

from .qdp import encode_attrs
from .specs import NAMESPACE, PLUGINS, bind, check_node

logger = logging.getLogger(__name__)


@functools.cache
def register_converters() -> None:
    """Register one converter per op in ``PLUGINS`` (once per process)."""
    for op in PLUGINS:
        target = getattr(getattr(torch.ops, NAMESPACE), op).default
        dynamo_tensorrt_converter(
            target,
            capability_validator=functools.partial(_supported, op),
            priority=ConverterPriority.HIGH,
            supports_dynamic_shapes=True,
        )(_converter(op))


def _converter(op: str) -> Any:
    def convert(ctx: Any, target: Any, args: Sequence[Any], kwargs: dict[str, Any], name: str) -> Any:
        call = bind(op, args, kwargs)
        tensors = [
            get_trt_tensor(ctx, value, f"{name}_{arg}")
            for arg, value in zip(call.spec.tensors, call.tensors, strict=True)
        ]
        plugin = getattr(getattr(trtp.op, NAMESPACE), call.spec.name)(
            *tensors, **encode_attrs(call.spec, call.attrs)
        )
        layer = ctx.net.add_plugin(plugin, aot=True)
        layer.name = f"[{target}]-[{name}]"
        # The op's outputs come first; a workspace output after them is the kernel's own.
        outputs = tuple(layer.get_output(i) for i in range(len(call.spec.returns)))
        return outputs[0] if len(outputs) == 1 else outputs

    convert.__name__ = f"convert_{op}"
    return convert


def _supported(op: str, node: Node, settings: Any = None) -> bool:
    try:
        check_node(node)
    except InputError as error:
        logger.warning("%s stays in PyTorch: %s", node.name, error)
        return False
    return True

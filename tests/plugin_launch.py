"""A plugin's kernel launched through Triton with the plugin's contract (the spec's constexprs for the
largest shapes, its scalars and grid), on tensors: the CPU tests run it under TRITON_INTERPRET=1 to
check the contract that the engine's AOT kernels are launched with."""

from collections.abc import Mapping

from torch import Tensor

from anchordetr_trt.converters.specs import Attrs, PluginSpec, Shapes


def launch(
    spec: PluginSpec,
    inputs: Mapping[str, Tensor],
    outputs: Mapping[str, Tensor],
    attrs: Attrs,
    max_shapes: Shapes | None = None,
) -> None:
    """Launch the plugin's kernel on contiguous tensors with block sizes chosen for ``max_shapes``
    (default: these inputs), as the TensorRT engine does for every input up to its largest."""
    tensors = {**inputs, **outputs}
    if not all(t.is_contiguous() for t in tensors.values()):
        raise ValueError(f"{spec.name}: plugin buffers are dense; got a non-contiguous tensor")
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    dtypes = {name: t.dtype for name, t in inputs.items()}
    spec.check_dtypes(dtypes)
    constexprs, options = spec.launch_meta(max_shapes or shapes, dtypes, attrs)
    pointers = {
        param: tensors[name].view(spec.pointer_dtypes.get(name, tensors[name].dtype))
        for param, name in spec.pointers.items()
        if name not in spec.absent
    }
    grid = spec.grid(shapes, attrs, constexprs)
    spec.kernel_fn()[grid](**pointers, **spec.scalars(shapes, attrs), **constexprs, **options)

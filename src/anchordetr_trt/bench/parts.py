"""The model in three parts, each timed on its own at a benchmark row's shape: where the time of a
whole call goes, for the per-part FLOP rates of ``flops``.

- ``backbone``: ``model.backbone``, the ResNet trunk (images -> features);
- ``encoder``: ``model.encode``, the input projection, the position embeddings and the encoder layers;
- ``decoder``: ``model.transformer.decode``, the row and column keys, the queries, the decoder layers
  and the prediction heads.

Compiled parts follow the inductor backend: its prepared model (folded batch norm, fused ops, its dtype,
channels_last) with each part compiled on its own for the row's static shape, under the backend's
Inductor settings and with CUDA graphs (``compile_part``), so that batch 1 is not timed as launch
overhead. Fusion across the part boundaries is lost, so the parts may add up to a little more than
the whole call.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..backends.inductor import INDUCTOR_OPTIONS, register_fallbacks
from ..model import AnchorDETR
from . import timing

PARTS = {
    "backbone": "model.backbone: the ResNet trunk",
    "encoder": "model.encode: input projection, position embeddings, encoder layers",
    "decoder": "model.transformer.decode: row/column keys, queries, decoder layers, prediction heads",
}
# At most this many timed calls per part (after warm-up): the parts are a breakdown of the headline
# numbers, measured with fewer calls so that the slow eager fp32 baseline at batch 32 stays affordable.
PART_CALLS = 20


class Part(NamedTuple):
    """One part of the forward: ``call(*args)`` is what the model computes there."""

    name: str
    call: Callable
    args: tuple


def split_forward(model: AnchorDETR, images: Tensor, mask: Tensor | None) -> list[Part]:
    """The model's forward (less its input checks) as its parts, in order, each with the inputs it gets
    in a forward of ``images`` [B, 3, H, W] and ``mask`` [B, H, W]. Runs the forward once to get them;
    the last part returns the transformer's (logits, boxes)."""
    parts = []

    def run(name: str, call: Callable, *args):
        parts.append(Part(name, call, args))
        return call(*args)

    features = run("backbone", model.backbone, images)
    encoded = run("encoder", model.encode, features, mask)
    run("decoder", model.transformer.decode, encoded)
    return parts


def compile_part(call: Callable) -> Callable:
    """``call`` through ``torch.compile`` for static shapes, as the inductor backend compiles its range
    (its Inductor settings) and with CUDA graphs (``mode="reduce-overhead"``'s setting, which
    torch.compile takes only without options), the package's ops registered as its fallbacks."""
    register_fallbacks()
    options = {"triton.cudagraphs": True, **INDUCTOR_OPTIONS}
    return torch.compile(call, fullgraph=True, dynamic=False, options=options)


def time_parts(
    model: AnchorDETR,
    images: Tensor,
    mask: Tensor,
    *,
    compiled: bool,
    warmup: int,
    iters: int,
) -> dict[str, float]:
    """Milliseconds per call of each part of ``model`` on inputs of the shape of ``images`` and
    ``mask``, the calls queued back to back as a throughput measurement queues them. ``compiled``:
    each part through ``compile_part`` for this shape (CUDA graphs on a GPU), else eager.

    Cost: compiled, three static compiles per shape (each some seconds with a cold cache); eager, ``warmup + iters`` calls of each part."""
    device = images.device
    with torch.no_grad():
        parts = split_forward(model, images, mask)
        times = {}
        for part in parts:
            call = compile_part(part.call) if compiled else part.call
            run = _step(call, part.args, graphs=compiled and device.type == "cuda")
            for _ in range(max(warmup, 3) if compiled else warmup):  # compile, record, replay
                run()
            times[part.name] = 1000 * timing.seconds_back_to_back(run, device, iters) / iters
    return times


def _step(call: Callable, args: tuple, graphs: bool) -> Callable[[], object]:
    def run() -> object:
        if graphs:  # a new step for torch.compile's CUDA graphs: the last outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return call(*args)

    return run

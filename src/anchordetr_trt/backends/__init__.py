"""The backends behind ``anchordetr_trt.compile``, one module each, all with one interface:

- ``status(device) -> (available, reason)``: whether it can run on ``device`` here, and why (not);
- ``build(model, spec) -> runner``: ``runner(images [B, 3, H, W], mask [B, H, W])`` returns the
  model's output dict; it receives inputs already checked, cast to ``spec.dtype`` on ``spec.device``
  and, where ``PADDED`` is true, padded to multiples of ``spec.SIZE_MULTIPLE``;
- ``PADDED``: whether the backend compiles for padded shapes.

``engine`` runs a serialized TensorRT engine (``load_engine``) behind the same wrapper; it builds
nothing from a model, so it is not among ``BACKENDS``, which ``compile`` chooses from.

``choose_backend`` is the one rule for which backend runs: ``compile``, ``anchordetr-trt info``, the
demo and the benchmark all ask it.
"""

from types import ModuleType

import torch

from ..errors import BackendUnavailableError, InputError
from . import eager, engine, inductor, tensorrt

# Fastest first: compile(backend="auto") takes the first available.
BACKENDS: dict[str, ModuleType] = {"tensorrt": tensorrt, "inductor": inductor, "eager": eager}
# Runners of artifacts built elsewhere: ``CompiledAnchorDETR`` wraps them too.
RUNNERS: dict[str, ModuleType] = {**BACKENDS, "engine": engine}


def backend_status(device: torch.device, precision: str | None = None) -> dict[str, tuple[bool, str]]:
    """For each backend: (can it run on ``device`` here, at ``precision`` if given; why or why not).
    A backend whose module lists ``PRECISIONS`` runs only those."""
    status = {}
    for name, module in BACKENDS.items():
        ok, reason = module.status(device)
        supported = getattr(module, "PRECISIONS", None)
        if ok and precision is not None and supported is not None and precision not in supported:
            ok, reason = False, f"builds {' or '.join(supported)} only, not precision={precision!r}"
        status[name] = (ok, reason)
    return status


def choose_backend(requested: str, device: torch.device, precision: str | None = None) -> tuple[str, str]:
    """(backend, reason) for ``requested`` ("auto" or a name) on ``device`` at ``precision``;
    BackendUnavailableError naming what is missing and the backend to use instead when the requested
    one cannot run. Names in any case, as variant and release names."""
    requested = requested.strip().lower() if isinstance(requested, str) else requested
    if requested != "auto" and requested not in BACKENDS:
        raise InputError(f"unknown backend {requested!r}: choose one of auto, {', '.join(BACKENDS)}")
    status = backend_status(device, precision)
    available = [name for name, (ok, _) in status.items() if ok]
    if requested == "auto":
        choice = available[0]
        names = list(BACKENDS)
        skipped = [f"{name}: {status[name][1]}" for name in names[: names.index(choice)]]
        return choice, status[choice][1] + (f" (not {'; '.join(skipped)})" if skipped else "")
    ok, reason = status[requested]
    if not ok:
        raise BackendUnavailableError(
            f"backend={requested!r} cannot run here: {reason}; use backend={available[0]!r}"
        )
    return requested, reason

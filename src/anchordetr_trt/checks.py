"""``anchordetr-trt check``: the package's parity suite, run against this machine's stack.

Four groups of checks, each a row of the report with its measured figures:

- ``ops``: each fused op's Triton kernel against its PyTorch reference at AnchorDETR's real shapes
  (``custom_ops.cases``; CUDA only: on the CPU the ops run that reference itself);
- ``backends``: each requested backend that can run here against the eager fp32 model, on batches of
  varied sizes with padding (``testing.compare_detections`` with the precision's tolerances); eager
  off CUDA is that model itself, so it is skipped there;
- ``export``: ``torch.export`` with dynamic shapes, run at several shapes against the eager model;
- ``tensorrt``: engine build, every ``anchordetr`` op inside the engine (no PyTorch fallback), save and
  load round trip, and the error for an input outside the engine's range.

A check that cannot run here is skipped with the reason; one that raises fails with the error.
"""

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .devices import resolve_device
from .errors import InputError
from .spec import covering_range

GROUPS = ("ops", "backends", "export", "tensorrt")
BACKENDS = ("eager", "inductor", "tensorrt")
OP_DTYPES = (torch.float32, torch.float16)


@dataclass
class CheckResult:
    """One row of the report: ``status`` is "pass", "fail" or "skip"; ``detail`` says why."""

    group: str
    name: str
    status: str
    figures: dict = field(default_factory=dict)
    detail: str = ""


class _Skip(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


class CheckSuite:
    """The checks of one model (a checkpoint, or seeded random weights) on one device."""

    def __init__(
        self,
        ckpt: str | Path | None = None,
        *,
        variant: str | None = None,
        backends: Sequence[str] = BACKENDS,
        precision: str | None = None,
        device: str | torch.device | None = None,
        log: Callable[[str], None] = lambda line: None,
    ):
        from .config import variant_name
        from .testing import example_batches
        from .weights import load_or_random

        self.device = resolve_device(device)
        self.backends, self.precision, self.log = tuple(backends), precision, log
        model = load_or_random(ckpt, variant=variant)
        self.weights = str(ckpt) if ckpt is not None else "seeded random weights (seed 0): an untrained model"
        self.state_dict, self.variant = model.state_dict(), variant_name(model.config)
        self.reference = self.load(fused=False)
        self.batches = example_batches(device=self.device)
        self.min_shape, self.max_shape = covering_range(
            [(images.shape[0], *images.shape[2:]) for images, _ in self.batches]
        )
        self._compiled: dict[str, tuple[torch.nn.Module, float] | Exception] = {}
        self._expected: dict[tuple[int, bool], tuple[torch.Tensor, dict]] = {}
        self._cache_dir = tempfile.TemporaryDirectory(prefix="anchordetr_check_")

    def load(self, *, fused: bool):
        """A fresh fp32 model with the suite's weights; ``fused`` uses the custom ops (on CUDA, the kernels)."""
        from .checkpoint import load_model

        model = load_model({"model": self.state_dict}, variant=self.variant, device=self.device)
        return model.set_fused_ops(fused)

    def run(self, groups: Sequence[str] = GROUPS) -> list[CheckResult]:
        results = []
        for group in GROUPS:
            if group in groups:
                for name, check in getattr(self, f"_{group}")():
                    results.append(self._run(group, name, check))
        self._cache_dir.cleanup()
        return results

    def _run(self, group: str, name: str, check: Callable[[], dict]) -> CheckResult:
        self.log(f"check {group} {name} ...")
        try:
            result = CheckResult(group, name, "pass", check())
        except _Skip as reason:
            result = CheckResult(group, name, "skip", detail=str(reason))
        except _Failed as failure:
            result = CheckResult(group, name, "fail", failure.figures, failure.report)
        except Exception as error:  # a crash is this check's failure, not the end of the suite
            result = CheckResult(group, name, "fail", detail=f"{type(error).__name__}: {error}")
        self.log(f"check {group} {name}: {result.status}")
        return result

    # -- the groups: each yields (name, check) pairs -------------------------------------------------

    def _ops(self):
        if self.device.type != "cuda":
            reason = (
                "the Triton kernels run on CUDA only; on the CPU each op runs its PyTorch reference itself"
            )
            yield "fused kernels", _skip(reason)
            return
        from .custom_ops.cases import OP_CASES

        for spec in OP_CASES:
            yield spec.name, lambda spec=spec: check_op(spec, self.device)

    def _backends(self):
        from .backends import backend_status

        status = backend_status(self.device)
        for backend in self.backends:
            ok, reason = status[backend]
            if not ok:
                yield backend, _skip(f"cannot run on {self.device}: {reason}")
                continue
            if self._is_the_reference(backend):
                yield (
                    backend,
                    _skip(
                        f"on {self.device} the eager backend is the reference computation itself (fp32, each "
                        "fused op its PyTorch reference): comparing it with eager fp32 checks nothing"
                    ),
                )
                continue
            for images, mask in self.batches:
                name = f"{backend} {tuple(images.shape[:1]) + tuple(images.shape[2:])}"
                yield name, lambda b=backend, i=images, m=mask: self._check_backend(b, i, m)

    def _is_the_reference(self, backend: str) -> bool:
        """Whether ``backend`` here computes what the reference computes: eager off CUDA runs fp32 with
        each fused op's PyTorch reference, which is the reference model."""
        return backend == "eager" and self.device.type != "cuda"

    def _export(self):
        from .export import example_inputs, export_model

        state = {}
        min_shape = (1, max(64, self.min_shape[1] // 2), max(64, self.min_shape[2] // 2))
        max_shape = (self.max_shape[0] + 1, *self.max_shape[1:])

        def export() -> dict:
            start = time.perf_counter()
            state["program"] = export_model(self.load(fused=True), min_shape=min_shape, max_shape=max_shape)
            return {
                "min_shape": min_shape,
                "max_shape": max_shape,
                "export_s": round(time.perf_counter() - start, 1),
            }

        yield "export", export
        for images, mask in [example_inputs(min_shape, self.device), *self.batches]:
            name = f"exported {tuple(images.shape[:1]) + tuple(images.shape[2:])}"
            yield name, lambda i=images, m=mask: self._check_exported(state, i, m)

    def _tensorrt(self):
        from .backends import tensorrt

        ok, reason = tensorrt.status(self.device)
        if not ok:
            yield "tensorrt", _skip(reason)
            return
        yield "engine build", lambda: {"build_s": round(self.compiled("tensorrt")[1], 1)}
        yield "plugins in engine", self._check_plugins
        yield "save/load round trip", self._check_round_trip
        yield "out-of-range input", self._check_out_of_range

    # -- the checks --------------------------------------------------------------------------------

    def compiled(self, backend: str) -> tuple[torch.nn.Module, float]:
        """(the model compiled with ``backend``, seconds it took), compiled once: a compile that failed
        fails every check of that backend with its error, without trying again."""
        if backend not in self._compiled:
            start = time.perf_counter()
            try:
                self._compiled[backend] = (self._compile(backend), time.perf_counter() - start)
            except Exception as error:
                self._compiled[backend] = error
        if isinstance(self._compiled[backend], Exception):
            raise self._compiled[backend]
        return self._compiled[backend]

    def _compile(self, backend: str):
        import anchordetr_trt  # the public compile(), whichever module defines it

        return anchordetr_trt.compile(
            {"model": self.state_dict},
            variant=self.variant,
            backend=backend,
            precision=self.precision,
            device=self.device,
            min_shape=self.min_shape,
            opt_shape=self.max_shape,
            max_shape=self.max_shape,
            cache_dir=Path(self._cache_dir.name) if backend == "tensorrt" else None,
        )

    def expected(self, images, mask, *, padded: bool = False) -> dict:
        """The reference's output on a batch, computed once per batch; ``padded``: on the batch padded
        to the grid of 32, as compiled modules and exported programs pad it (padding alone moves fp32
        logits by up to 0.02, more than fp32's tolerance, so each is compared on its own input)."""
        from .compiled import pad_to_multiple

        key = (id(images), padded)
        cached = self._expected.get(key)
        if cached is None or cached[0] is not images:  # the tensor is kept, so its id is not reused
            inputs = pad_to_multiple(images, mask) if padded else (images, mask)
            with torch.no_grad():
                cached = self._expected[key] = (images, self.reference(*inputs))
        return cached[1]

    def _check_backend(self, backend: str, images, mask) -> dict:
        from .testing import compare_detections

        model, compile_s = self.compiled(backend)
        expected = self.expected(images, mask, padded=model.padded)
        comparison = compare_detections(model(images, mask), expected, precision=model.precision)
        figures = {"compile_s": round(compile_s, 1), **comparison.figures()}
        if comparison.failures:
            raise _Failed(comparison.report(), figures)
        return figures

    def _check_exported(self, state: dict, images, mask) -> dict:
        from .testing import compare_detections

        if "program" not in state:
            raise _Skip("the export failed (see the export row)")
        from .compiled import pad_to_multiple

        with torch.no_grad():  # the program takes sizes on its grid of 32 only
            got = state["program"].module()(*pad_to_multiple(images, mask))
        comparison = compare_detections(got, self.expected(images, mask, padded=True), precision="fp32")
        if comparison.failures:
            raise _Failed(comparison.report(), comparison.figures())
        return comparison.figures()

    def _check_plugins(self) -> dict:
        from .backends.tensorrt import ops_outside_tensorrt

        model, _ = self.compiled("tensorrt")
        outside = ops_outside_tensorrt(model.runner)
        if outside:
            raise _Failed(f"anchordetr ops left to PyTorch (not TensorRT plugins): {', '.join(outside)}")
        return {"ops_outside_tensorrt": outside}

    def _check_round_trip(self) -> dict:
        built, _ = self.compiled("tensorrt")
        records = _LogRecords("anchordetr_trt.backends.tensorrt")
        with records:
            start = time.perf_counter()
            loaded = self._compile("tensorrt")
            load_s = time.perf_counter() - start
        if not any("loading" in message for message in records.messages):
            raise _Failed(
                "the second compile with the same cache_dir built a new engine instead of loading it"
            )
        largest = 0.0
        for images, mask in self.batches:
            a, b = built(images, mask), loaded(images, mask)
            # NaN counts as the largest difference (max() would pass over it).
            diffs = ((a[k].float() - b[k].float()).abs().nan_to_num(math.inf).max().item() for k in a)
            largest = max(largest, *diffs)
        figures = {"load_s": round(load_s, 1), "max_abs_diff": largest}
        if largest > 1e-3:
            raise _Failed(f"the loaded engine differs from the built one by {largest:.3g} (> 0.001)", figures)
        return figures

    def _check_out_of_range(self) -> dict:
        from .export import example_inputs

        model, _ = self.compiled("tensorrt")
        shape = (self.max_shape[0] + 1, *self.max_shape[1:])
        try:
            model(*example_inputs(shape, self.device))
        except InputError as error:
            if "outside" not in str(error):
                raise _Failed(f"InputError without the range in its message: {error}") from None
            return {"shape": shape, "error": str(error)}
        raise _Failed(
            f"an input of {shape}, outside {self.min_shape}..{self.max_shape}, raised no InputError"
        )


class _Failed(AssertionError):
    def __init__(self, report: str, figures: dict | None = None):
        super().__init__(report)
        self.report, self.figures = report, figures or {}


def _skip(reason: str) -> Callable[[], dict]:
    def check() -> dict:
        raise _Skip(reason)

    return check


def check_op(spec, device: torch.device, cases: dict[str, dict] | None = None) -> dict:
    """The op's kernel (its launcher, and the op dispatching to it) against the reference on each of
    ``cases`` (default: the real shapes, ``spec.gpu_cases``); returns the cases and largest differences."""
    from .custom_ops.cases import assert_matches, run_launcher

    cases = spec.gpu_cases if cases is None else cases
    torch.manual_seed(0)
    largest = {}
    for case in cases.values():
        for dtype in OP_DTYPES if spec.dtypes != (None,) else (None,):
            args = spec.make_inputs(case, dtype, str(device))
            diff = max(
                run_launcher(spec, args, dtype),
                assert_matches(spec, spec.op(*args), spec.reference(*args), dtype),
            )
            key = str(dtype).removeprefix("torch.") if dtype else "mask"
            largest[key] = max(largest.get(key, 0.0), diff)
    return {"cases": list(cases), "max_abs_diff": largest}


class _LogRecords(logging.Handler):
    """Collects the messages of one logger while in a ``with`` block."""

    def __init__(self, name: str):
        super().__init__(logging.INFO)
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def format_table(results: Sequence[CheckResult]) -> str:
    """The pass/fail table, a count line, and each failure's report."""
    rows = [("group", "check", "result", "figures / reason")]
    rows += [(r.group, r.name, r.status.upper(), _summary(r)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    for r in results:
        if r.status == "fail":
            lines += ["", f"FAILED {r.group} {r.name}:", r.detail]
    return "\n".join(lines)


def _summary(result: CheckResult) -> str:
    if result.status == "skip" or (result.status == "fail" and not result.figures):
        return result.detail.splitlines()[0] if result.detail else ""
    f = result.figures
    if "match_rate" in f:
        diff, rate = f["max_abs_diff"], f["match_rate"]
        matched = f"{f['matched']}/{f['compared']}" if rate is not None else "n/a"
        non_finite = sum(sum(by_key.values()) for by_key in f["non_finite"].values())
        return (
            f"{f['precision']}: logits {diff['pred_logits']:.3g}, boxes {diff['pred_boxes']:.3g}, "
            f"matched {matched}, NaN/inf {non_finite}"
        )
    return ", ".join(f"{k} {_short(v)}" for k, v in f.items() if k != "error")


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return f"{len(value)}" if value and not isinstance(value[0], int) else str(value)
    return str(value)


def run_checks(
    ckpt: str | Path | None = None,
    *,
    variant: str | None = None,
    backends: Sequence[str] = BACKENDS,
    precision: str | None = None,
    device: str | torch.device | None = None,
    groups: Sequence[str] = GROUPS,
    out: Path | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> bool:
    """Runs the suite, prints its table and, with ``out`` (a folder), writes ``out/check.json`` (a result
    file, checked first: see ``outputs``); True if a check passed and none failed (a run whose every
    check was skipped proves nothing: False)."""
    from .environment import environment
    from .outputs import check_results, write_results

    if out is not None:
        check_results([Path(out) / "check.json"], "run_checks: out")

    suite = CheckSuite(ckpt, variant=variant, backends=backends, precision=precision, device=device, log=log)
    results = suite.run(groups)
    print(format_table(results))
    checked = any(r.status == "pass" for r in results)
    passed = checked and not any(r.status == "fail" for r in results)
    if not checked:
        log("nothing was checked: every check was skipped here (the table says why)")
    if out is not None:
        report = {
            "passed": passed,
            "weights": suite.weights,
            "variant": suite.variant,
            "device": str(suite.device),
            "environment": environment(),
            "results": [asdict(r) for r in results],
        }
        write_results(
            {Path(out) / "check.json": json.dumps(report, indent=1, default=str).encode()}, "run_checks: out"
        )
    return passed

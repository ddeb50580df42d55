"""pytest plugin (entry point ``pytest11``): fixtures for parity tests of a user's own checkpoint.

Options (or environment variables): ``--anchordetr-ckpt`` (ANCHORDETR_CKPT), ``--anchordetr-variant``
(ANCHORDETR_VARIANT), ``--anchordetr-backends`` (ANCHORDETR_BACKENDS, comma-separated, default
eager,inductor,tensorrt), ``--anchordetr-precision`` (ANCHORDETR_PRECISION) and ``--anchordetr-device``
(ANCHORDETR_DEVICE). Fixtures:

- ``anchordetr_reference``: the eager fp32 model (plain PyTorch ops), built once per session;
- ``anchordetr_model``: the compiled model, one test per requested backend; a backend that cannot run
  here is skipped with the reason;
- ``anchordetr_batches``: a few ``(images, mask)`` batches of varied sizes with padding.

Without a checkpoint both models get the same seeded random weights, and the plugin says so. torch is
imported only when a fixture is used: the plugin costs nothing to test suites that do not use it.
"""

import os

import pytest

_OPTIONS = {  # option -> (environment variable, help)
    "ckpt": ("ANCHORDETR_CKPT", "AnchorDETR checkpoint for the anchordetr_* fixtures (default: seeded random weights)"),
    "variant": ("ANCHORDETR_VARIANT", "model variant, e.g. r50-dc5 (default: the checkpoint's, or r50-dc5)"),
    "backends": ("ANCHORDETR_BACKENDS", "comma-separated backends for anchordetr_model (default eager,inductor,tensorrt)"),
    "precision": ("ANCHORDETR_PRECISION", "precision of anchordetr_model (default fp16 on a GPU, fp32 on the CPU)"),
    "device": ("ANCHORDETR_DEVICE", "device of the anchordetr_* fixtures (default: the GPU if there is one)"),
}  # fmt: skip
DEFAULT_BACKENDS = ("eager", "inductor", "tensorrt")
RANDOM_SEED = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("anchordetr", "anchordetr_trt parity fixtures")
    for name, (variable, help_text) in _OPTIONS.items():
        group.addoption(
            f"--anchordetr-{name}", dest=f"anchordetr_{name}", help=f"{help_text}; env {variable}"
        )


def option(config: pytest.Config, name: str) -> str | None:
    """The value of ``--anchordetr-<name>``, else of its environment variable, else None."""
    value = config.getoption(f"anchordetr_{name}")
    return value if value is not None else (os.environ.get(_OPTIONS[name][0]) or None)


def pytest_report_header(config: pytest.Config) -> str | None:
    if not any(option(config, name) for name in _OPTIONS):
        return None  # nothing asked of this plugin: keep other suites' headers as they are
    ckpt = option(config, "ckpt")
    weights = ckpt or f"seeded random weights (seed {RANDOM_SEED}): no --anchordetr-ckpt"
    return f"anchordetr_trt: {weights}; backends {', '.join(_backends(config))}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anchordetr_model" in metafunc.fixturenames:
        backends = _backends(metafunc.config)
        metafunc.parametrize("anchordetr_model", backends, indirect=True, ids=backends, scope="session")


def _backends(config: pytest.Config) -> list[str]:
    text = option(config, "backends")
    backends = [b.strip() for b in text.split(",") if b.strip()] if text else list(DEFAULT_BACKENDS)
    unknown = [b for b in backends if b not in DEFAULT_BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"--anchordetr-backends: unknown {', '.join(unknown)}; choose from {', '.join(DEFAULT_BACKENDS)}"
        )
    return backends


@pytest.fixture(scope="session")
def anchordetr_device(pytestconfig: pytest.Config):
    """The torch.device of the anchordetr_* fixtures."""
    from .devices import resolve_device

    return resolve_device(option(pytestconfig, "device"))


@pytest.fixture(scope="session")
def anchordetr_weights(pytestconfig: pytest.Config) -> tuple[dict, str]:
    """(state dict, variant name) of the checkpoint, or of seeded random weights."""
    import warnings

    from .config import DEFAULT_VARIANT, variant_name
    from .weights import load_or_random

    ckpt, variant = option(pytestconfig, "ckpt"), option(pytestconfig, "variant")
    if ckpt is None:
        warnings.warn(
            f"anchordetr_trt: no --anchordetr-ckpt (or ANCHORDETR_CKPT): the fixtures use seeded random weights "
            f"(seed {RANDOM_SEED}) of {variant or DEFAULT_VARIANT}, an untrained model",
            stacklevel=1,
        )
    model = load_or_random(ckpt, variant=variant, seed=RANDOM_SEED)
    return model.state_dict(), variant_name(model.config)


@pytest.fixture(scope="session")
def anchordetr_reference(anchordetr_weights, anchordetr_device):
    """The eager fp32 model with plain PyTorch ops: the reference of parity tests. Do not modify it."""
    from .checkpoint import load_model

    state_dict, variant = anchordetr_weights
    return load_model(state_dict, variant=variant, device=anchordetr_device).set_fused_ops(False)


@pytest.fixture(scope="session")
def anchordetr_batches(anchordetr_device) -> list:
    """``(images [B, 3, H, W], mask [B, H, W])`` batches of varied sizes, with padding, on the device
    (``anchordetr_trt.testing.example_batches``)."""
    from .testing import example_batches

    return example_batches(device=anchordetr_device)


@pytest.fixture(scope="session")
def anchordetr_model(
    request: pytest.FixtureRequest, anchordetr_weights, anchordetr_device, anchordetr_batches
):
    """The model compiled with the backend of this test's parameter; skipped where it cannot run."""
    import anchordetr_trt  # the public compile(), whichever module defines it

    from .backends import backend_status
    from .spec import covering_range

    backend = request.param
    ok, reason = backend_status(anchordetr_device)[backend]
    if not ok:
        pytest.skip(f"backend {backend!r} cannot run on {anchordetr_device}: {reason}")
    state_dict, variant = anchordetr_weights
    min_shape, max_shape = covering_range(
        [(images.shape[0], *images.shape[2:]) for images, _ in anchordetr_batches]
    )
    return anchordetr_trt.compile(
        {"model": state_dict},
        variant=variant,
        backend=backend,
        precision=option(request.config, "precision"),
        device=anchordetr_device,
        min_shape=min_shape,
        opt_shape=max_shape,
        max_shape=max_shape,
    )

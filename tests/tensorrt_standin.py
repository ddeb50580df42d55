"""A stand-in for the few native classes of TensorRT's Python bindings that ``tensorrt.plugin`` calls.

``tensorrt.plugin`` (registration, validation, ``_TemplatePluginCreator``, the AOT plugin class, shape
expressions) is plain Python inside the ``tensorrt-cu13-bindings`` wheel; only the native module it
imports as ``tensorrt`` cannot be installed here. This module stands in for that native module so that
TensorRT's own plugin code runs unchanged (``load_plugin_layer``). It is NOT TensorRT: no network,
builder, engine or kernel exists here.

Dimension expressions carry one value per profile corner (say min, opt, a shape below max, and max)
and compute elementwise, as TensorRT's expression builder would if it were evaluated at each corner:
one pass through TensorRT's shape and launch-parameter code gives its results at every corner.
"""

import enum
import importlib.util
import operator
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


float32, float16, int8, int32, bool, uint8, bfloat16, int64 = (  # TensorRT's names
    DataType.FLOAT,
    DataType.HALF,
    DataType.INT8,
    DataType.INT32,
    DataType.BOOL,
    DataType.UINT8,
    DataType.BF16,
    DataType.INT64,
)
_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}


def nptype(dtype: DataType) -> type:
    return _NUMPY[dtype]


TensorFormat = enum.IntEnum(
    "TensorFormat", "LINEAR CHW2 HWC8 CHW4 CHW16 CHW32 DHWC8 CDHW32 HWC DLA_LINEAR", start=0
)
PluginFieldType = enum.IntEnum(
    "PluginFieldType",
    "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 FP8 INT4",
    start=0,
)
TensorRTPhase = enum.IntEnum("TensorRTPhase", "BUILD RUNTIME", start=0)
QuickPluginCreationRequest = enum.IntEnum(
    "QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT", start=0
)
DimensionOperation = enum.IntEnum(
    "DimensionOperation", "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV", start=0
)
PluginArgType = enum.IntEnum("PluginArgType", "INT", start=0)
PluginArgDataType = enum.IntEnum("PluginArgDataType", "INT8 INT16 INT32", start=0)

_OPERATIONS = {
    DimensionOperation.SUM: operator.add,
    DimensionOperation.PROD: operator.mul,
    DimensionOperation.MAX: max,
    DimensionOperation.MIN: min,
    DimensionOperation.SUB: operator.sub,
    DimensionOperation.EQUAL: lambda a, b: int(a == b),
    DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: operator.floordiv,
    DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2):
        self.messages: list[tuple[int, str]] = []

    def log(self, severity: int, message: str) -> None:
        self.messages.append((severity, message))


class PluginField:
    """A named attribute buffer; ``data`` reads back as a 1-D NumPy array, as the native class's does."""

    def __init__(self, name: str = "", data: object = None, type: PluginFieldType = PluginFieldType.UNKNOWN):
        self.name, self.type = name, type
        if isinstance(data, bytes):
            self.data = np.frombuffer(data, dtype=np.int8).copy()
        else:
            self.data = np.atleast_1d(np.asarray(data if data is not None else []))
        self.size = len(self.data)


class PluginFieldCollection(list):
    pass


class _Interface:
    def __init__(self, *args: object, **kwargs: object):
        pass


class IPluginV3(_Interface): ...


class IPluginV3QuickCore(_Interface): ...


class IPluginV3QuickBuild(_Interface): ...


class IPluginV3QuickRuntime(_Interface): ...


class IPluginV3QuickAOTBuild(_Interface): ...


class IPluginCreatorV3Quick(_Interface): ...


class ISymExpr(_Interface): ...


class ITensor:
    """A network tensor (only its identity matters to the plugin layer)."""

    def __init__(self, name: str):
        self.name = name


class PluginRegistry:
    """Creators by (name, version, namespace); a second creator of one key is refused, as TensorRT does."""

    def __init__(self):
        self.creators: dict[tuple[str, str, str], object] = {}

    def register_creator(self, creator: object, namespace: str) -> bool:
        key = (creator.name, creator.plugin_version, namespace)
        if key in self.creators:
            return False
        self.creators[key] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str) -> object:
        return self.creators.get((name, version, namespace))


_REGISTRY = PluginRegistry()


def get_plugin_registry() -> PluginRegistry:
    return _REGISTRY


class IDimensionExpr:
    """A dimension expression: its value at each profile corner."""

    def __init__(self, values: Sequence[int], constant: object = False):
        self.values, self._constant = tuple(int(v) for v in values), constant

    def is_constant(self) -> object:
        return self._constant

    def get_constant_value(self) -> int:
        return self.values[0]


class IExprBuilder:
    def __init__(self, corners: int):
        self.corners = corners

    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr([value] * self.corners, constant=True)

    def operation(self, op: DimensionOperation, a: IDimensionExpr, b: IDimensionExpr) -> IDimensionExpr:
        values = [_OPERATIONS[op](x, y) for x, y in zip(a.values, b.values, strict=True)]
        return IDimensionExpr(values, constant=a.is_constant() and b.is_constant())


class Dims(list):
    MAX_DIMS = 8

    def __init__(self, dims: object = ()):
        super().__init__([0] * dims if isinstance(dims, int) else list(dims))


class DimsExprs(list):
    def __init__(self, length: object = 0):
        super().__init__([None] * length if isinstance(length, int) else list(length))


class PluginTensorDesc:
    def __init__(self, dims: Sequence[int] = (), type: DataType = DataType.FLOAT):
        self.dims, self.type, self.format, self.scale = Dims(dims), type, TensorFormat.LINEAR, 1.0


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc, min: Sequence[int], opt: Sequence[int], max: Sequence[int]):
        self.desc, self.min, self.opt, self.max = desc, Dims(min), Dims(opt), Dims(max)


class LaunchParams:
    """What ``get_launch_params`` fills in: grid, block and shared memory as symbolic expressions."""

    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None


class SymExprSetter:
    """Receives the kernel's extra (scalar) arguments."""

    def __init__(self):
        self.nbSymExprs = 0
        self.exprs: dict[int, object] = {}

    def __setitem__(self, index: int, expr: object) -> None:
        self.exprs[index] = expr


__version__ = "stand-in"


def load_plugin_layer(plugin_dir: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Import TensorRT's ``tensorrt/plugin`` package from ``plugin_dir`` (taken from a bindings wheel) as
    ``tensorrt.plugin``, over this stand-in as ``tensorrt``; returns (tensorrt, tensorrt.plugin)."""
    trt = sys.modules[__name__]
    sys.modules["tensorrt"] = trt
    spec = importlib.util.spec_from_file_location(
        "tensorrt.plugin", plugin_dir / "__init__.py", submodule_search_locations=[str(plugin_dir)]
    )
    plugin = importlib.util.module_from_spec(spec)
    sys.modules["tensorrt.plugin"] = plugin
    trt.plugin = plugin
    spec.loader.exec_module(plugin)
    return trt, plugin

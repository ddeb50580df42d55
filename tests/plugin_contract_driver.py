"""Drive the anchordetr plugins through TensorRT's own Python plugin layer, as a network build does.

Run by tests/test_tensorrt_plugin_contract.py in a process without TRITON_INTERPRET (the AOT callback
compiles real PTX): ``python plugin_contract_driver.py PLUGIN_DIR VERSION`` with the cases as JSON on
stdin; prints what TensorRT's plugin code produced, as JSON. TensorRT's classes are the real ones from
the wheel; only the native module under them is ``tensorrt_standin``.

For each case: register (twice: registration is idempotent), create the plugin through the registered
creator with the attributes the converter passes, read back its attributes, output dtypes, output
shapes at every profile corner, format combinations, ``configure_plugin``, launch parameters and extra
arguments (``get_launch_params``, which calls the AOT implementation) and the kernel (``get_kernel``);
then the launch again with TensorRT handing concrete (opt) dims instead of -1 for the runtime dims.
"""

import functools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tensorrt_standin, beside this file

import tensorrt_standin

NAMESPACE = "anchordetr"


def main() -> None:
    plugin_dir, version = Path(sys.argv[1]), sys.argv[2]
    trt, trtp = tensorrt_standin.load_plugin_layer(plugin_dir)
    trt.__version__ = version
    from triton.backends.compiler import GPUTarget

    from anchordetr_trt.converters import qdp
    from anchordetr_trt.converters.specs import PLUGINS

    # No GPU here: the AOT implementation compiles for an H100 (sm_90), as it would under TensorRT on one.
    qdp.compile_kernel = functools.partial(qdp.compile_kernel, target=GPUTarget("cuda", 90, 32))

    qdp.register_plugins()
    qdp.register_plugins()  # a second call (a retry, a second compile) must not fail
    payload = json.load(sys.stdin)
    results = [drive(trt, trtp, qdp, PLUGINS, payload["corners"], case) for case in payload["cases"]]
    json.dump({"aot_enabled": trtp._export.IS_AOT_ENABLED, "results": results}, sys.stdout)


def drive(trt, trtp, qdp, plugins, corners: int, case: dict) -> dict:
    spec = plugins[case["op"]].variant(frozenset(case["present"]))
    tensors = spec.tensors
    types = [getattr(trt.DataType, case["dtypes"][name]) for name in tensors]
    plugin_def = getattr(getattr(trtp.op, NAMESPACE), spec.name)
    instance = plugin_def(*(trt.ITensor(name) for name in tensors), **qdp.encode_attrs(spec, case["attrs"]))
    _, _, plugin = instance(trt.QuickPluginCreationRequest.STRICT_AOT)
    out = {"class": type(plugin).__name__, "attrs": qdp.decode_attrs(spec, plugin.attrs)}
    out["output_types"] = [
        t.name for t in plugin.get_output_data_types(types, [len(case["dims"][n]) for n in tensors])
    ]

    builder = trt.IExprBuilder(corners)
    inputs = [
        [trt.IDimensionExpr(values, constant=len(set(values)) == 1) for values in case["dims"][n]]
        for n in tensors
    ]
    output_exprs = plugin.get_output_shapes([trt.DimsExprs(d) for d in inputs], [], builder)
    output_dims = [[list(e.values) for e in exprs] for exprs in output_exprs]
    out["output_dims"] = output_dims
    output_types = [getattr(trt.DataType, t) for t in out["output_types"]]

    def descriptors(runtime_dims: str) -> list:
        descs = []
        for dims, dtype in [
            *zip((case["dims"][n] for n in tensors), types, strict=True),
            *zip(output_dims, output_types, strict=True),
        ]:
            lo, opt, hi = ([d[i] for d in dims] for i in (0, 1, -1))
            shown = (
                [-1 if a != b else a for a, b in zip(lo, hi, strict=True)] if runtime_dims == "-1" else opt
            )
            descs.append(trt.DynamicPluginTensorDesc(trt.PluginTensorDesc(shown, dtype), lo, opt, hi))
        return descs

    in_out = descriptors("-1")
    combos = plugin.get_supported_format_combinations(in_out, len(tensors))
    out["formats"] = [[d.type.name, d.format.name] for d in combos]
    plugin.configure_plugin(in_out[: len(tensors)], in_out[len(tensors) :])
    out["tactics"] = plugin.get_valid_tactics()
    for runtime_dims in ("-1", "opt"):
        launched = launch(trt, plugin, inputs, descriptors(runtime_dims), len(tensors), builder)
        out["launch" if runtime_dims == "-1" else "launch_concrete_dims"] = launched
    return out


def launch(trt, plugin, inputs, in_out, num_inputs, builder) -> dict:
    plugin.set_tactic(0)
    params, setter = trt.LaunchParams(), trt.SymExprSetter()
    plugin.get_launch_params([trt.DimsExprs(d) for d in inputs], in_out, num_inputs, params, setter, builder)
    name, ptx = plugin.get_kernel(
        [d.desc for d in in_out[:num_inputs]], [d.desc for d in in_out[num_inputs:]]
    )
    ptx = ptx.decode()
    header = re.search(rf"\.entry\s+{re.escape(name)}\s*\(([^)]*)\)", ptx)
    return {
        "grid": [list(getattr(params, f"grid_{a}").expr.values) for a in "xyz"],
        "block": [list(getattr(params, f"block_{a}").expr.values) for a in "xyz"],
        "shared_mem": list(params.shared_mem.expr.values),
        "extra_args": [
            [setter.exprs[i].dtype.name, list(setter.exprs[i].expr.values)] for i in range(setter.nbSymExprs)
        ],
        "kernel": name,
        "ptx_params": re.findall(r"\.param\s+\.(\w+)", header[1]) if header else None,
        "ptx": ptx,
    }


if __name__ == "__main__":
    main()

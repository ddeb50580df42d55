"""A custom op's kernel compiled for sm_90 on this machine (no GPU needed) with the installed Triton:
``rcda_aggregate``'s as the launcher builds it for the encoder's map in fp16 (50x50 unless --width),
or ``self_attention``'s for the decoder's 900 tokens (--op self_attention); launch config, pointers
and channel counts specialized as divisible by 16. Prints its registers, its spills, its shared
memory and its main loop's SASS instructions counted by kind, what a step issues per thread. Run it
without TRITON_INTERPRET (the interpreter compiles nothing); docs/transformer_performance.md reads it
for Triton 3.6, the GPU machine's:

    python -m scripts.sass_rcda [--width 84] [--block-q 64] [--num-warps 8] [--head-dim 64]
    python -m scripts.sass_rcda --op self_attention [--batch 1]
"""

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from anchordetr_trt.custom_ops import _common, rcda_aggregate, self_attention

# rcda_aggregate's arguments by kind.
POINTERS = {
    "queries_ptr", "row_term_ptr", "col_term_ptr", "k_col_ptr", "k_row_ptr", "values_ptr", "out_ptr",
    "probs_col_ptr",
}  # fmt: skip
MASKS = {"mask_col_ptr", "mask_row_ptr"}
# Ints that are multiples of the channels (16 divides them) for every call of the model.
DIVISIBLE = {
    "query_channels", "head_dim", "value_channels", "value_channel", "row_term_stride_b",
    "row_term_stride_y", "row_term_stride_x", "col_term_stride_b", "col_term_stride_y", "col_term_stride_x",
}  # fmt: skip


class Build(NamedTuple):
    """A kernel compiled for sm_90."""

    cubin: bytes
    warps: int
    shared: int  # bytes of shared memory a program takes


def compile_encoder_kernel(
    width: int = 50,
    block_q: int | None = None,
    num_warps: int | None = None,
    head_dim: int = 32,
) -> Build:
    """rcda_aggregate's kernel for the encoder's call on a map ``width`` wide (50: 800x800; 2,500
    queries, 8 heads of ``head_dim``, fp16), with ``block_q`` queries per program and ``num_warps``
    warps (None: the launch config's choices without an SM count, BLOCK_Q and NUM_WARPS)."""
    _, meta = rcda_aggregate.rcda_aggregate_launch_config(2500, 64, width, head_dim, 2, block_q=block_q)
    if num_warps:
        meta["num_warps"] = num_warps
    return _build(rcda_aggregate.rcda_aggregate_kernel, meta, POINTERS, MASKS, DIVISIBLE, "scale")


H100_SMS = 132


def compile_self_attention_kernel(batch: int = 8) -> Build:
    """self_attention's kernel for the decoder's call at ``batch`` on an H100 (900 tokens, 8 heads of
    32, fp16; the query block the launch config picks for that grid)."""
    _, meta = self_attention.self_attention_launch_config(900, batch * 8, 32, sm_count=H100_SMS)
    pointers = {"packed_ptr", "term_ptr", "out_ptr"}
    divisible = {"head_dim", "term_stride_b", "term_stride_l"}
    return _build(self_attention.self_attention_kernel, meta, pointers, set(), divisible, "scale_log2")


def _build(kernel, meta: dict, pointers: set, masks: set, divisible: set, float_arg: str) -> Build:
    """``kernel`` compiled for sm_90 with launch config ``meta``: ``pointers`` fp16 and ``masks`` uint8
    pointers, ``float_arg`` fp32, the other runtime arguments int32; pointers and ``divisible`` ints
    specialized as divisible by 16, as the model's launches are."""
    meta = dict(meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages")}
    constexprs = {**meta, "DOT_PRECISION": _common.dot_precision(torch.float16)}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*fp16"
        elif name in masks:
            signature[name] = "*u8"
        else:
            signature[name] = "fp32" if name == float_arg else "i32"
    specialized = [i for i, name in enumerate(kernel.arg_names) if name in pointers | masks | divisible]
    attrs = {(i,): [["tt.divisibility", 16]] for i in specialized}
    source = ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    return Build(compiled.asm["cubin"], compiled.metadata.num_warps, compiled.metadata.shared)


def main_loop(sass: str) -> list[str]:
    """The instructions of the loop (a branch back to an earlier label) with the most HGMMA instructions."""
    instructions, labels, pending = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        instruction = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+([^;]*);", line)
        if label:
            pending.append(label.group(1))
        elif instruction:
            labels.update(dict.fromkeys(pending, len(instructions)))
            pending = []
            instructions.append(instruction.group(1).strip())
    loops = []
    for end, text in enumerate(instructions):
        target = re.search(r"\bBRA\b.*?(\.L_x_\d+)", text)
        if target and labels.get(target.group(1), end) < end:
            loops.append(instructions[labels[target.group(1)] : end + 1])
    if not loops:
        raise RuntimeError("no loop found in the SASS")
    return max(loops, key=lambda loop: sum("HGMMA" in text for text in loop))


def opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def registers(sass: str) -> int:
    """Registers per thread of the kernel (its EIATTR_REGCOUNT attribute in nvdisasm's output)."""
    attribute = sass[sass.index("EIATTR_REGCOUNT") :]
    return int(re.search(r"\.word\s+(0x[0-9a-f]+)", attribute).group(1), 16)  # after the kernel's index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=("rcda_aggregate", "self_attention"), default="rcda_aggregate")
    parser.add_argument(
        "--width", type=int, default=50, help="rcda_aggregate: the map's width (the build's class)"
    )
    parser.add_argument("--block-q", type=int, choices=(64, 128), help="rcda_aggregate: queries per program")
    parser.add_argument("--num-warps", type=int, choices=(4, 8), help="rcda_aggregate: warps per program")
    parser.add_argument("--head-dim", type=int, default=32, help="rcda_aggregate: channels per head")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="self_attention: the decoder's batch (its query block on an H100)",
    )
    args = parser.parse_args()
    if args.op == "self_attention":
        build = compile_self_attention_kernel(args.batch)
    else:
        build = compile_encoder_kernel(args.width, args.block_q, args.num_warps, args.head_dim)
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / f"{args.op}.cubin"
        cubin.write_bytes(build.cubin)
        nvdisasm = Path(triton.knobs.nvidia.ptxas.path).parent / "nvdisasm"
        sass = subprocess.run([nvdisasm, cubin], capture_output=True, text=True, check=True).stdout
    loop = main_loop(sass)
    spills = [len(re.findall(r"\b(?:STL|LDL)", text)) for text in (sass, "\n".join(loop))]
    counts = collections.Counter(opcode(instruction) for instruction in loop)
    used = registers(sass)
    allocated = -(-used // 8) * 8  # a thread's registers are allocated 8 at a time
    print(
        f"triton {triton.__version__}, sm_90, {build.warps} warps: {used} registers per thread "
        f"(programs per SM: {65536 // (32 * build.warps * allocated)}), {spills[0]} local "
        f"(spill) loads and stores, {spills[1]} in the main loop; main loop of {len(loop)} SASS "
        f"instructions per thread per step; {build.shared // 1024} KiB of shared memory a program"
    )
    for name, count in counts.most_common():
        print(f"{count:5d}  {name}")


if __name__ == "__main__":
    main()

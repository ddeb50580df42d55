#!/usr/bin/env bash
# Every GPU check and benchmark in one call (`make gpu`), on a machine with torch preinstalled and no
# network. Results land in $OUT (default out/gpu): summary.txt, gpu.log, gpu_tests.xml, check.json, bench_ops.json,
# bench/ (bench.json, bench.png, profile), parts/ (per-part TFLOP/s), stream.json, parity.json, parity.md, onnx.json, train.json,
# accuracy.json, accuracy.md. Each stage has its own time limit, cut to what is left
# of GPU_BUDGET_S (default 575 s, one call of the GPU machine this project was built on: raise it where
# there is no such limit); a stage that fails does not stop the next one.
# STAGES="tests bench" runs a subset (e.g. to finish on a second call; the compile cache is kept).
# Training (7.5 min) and the trained-model accuracy check (~4 min) fill calls of their own on a machine
# with a 10-minute call limit: STAGES=train, then at once STAGES=accuracy (the checkpoint stays in
# .cache/train only while the machine is held). pycocotools must be importable: carry its wheel in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The code's commit for the JSON reports: pass COMMIT=$(git rev-parse --short HEAD) (the copied tree's .git may be stale).
export GIT_COMMIT=${COMMIT:-${GIT_COMMIT:-}}
# Compiled kernels and graphs are cached in the work tree, which a warm machine keeps between calls.
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton

if ! python3 -c "import anchordetr_trt" 2>/dev/null; then
    site=/tmp/anchordetr_site
    wheels=$(ls .whl/*.whl 2>/dev/null || true)  # e.g. pycocotools for the machine's Python
    python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target "$site" $wheels . \
        || { echo "install failed" | tee "$OUT/summary.txt"; exit 1; }
    export PYTHONPATH=$site
fi

: > "$OUT/summary.txt"
BUDGET=${GPU_BUDGET_S:-575}
STAGES=${STAGES:-info tests check bench-ops parity onnx stream bench parts train accuracy}
stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    local left=$((BUDGET - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        printf '%-10s skipped: the %ss budget is spent\n' "$name" "$BUDGET" | tee -a "$OUT/summary.txt"
        return 0
    fi
    echo "=== $name ($(date -u +%T), limit ${limit}s)" >> "$OUT/gpu.log"
    timeout "$limit" "$@" >> "$OUT/gpu.log" 2>&1
    local rc=$?
    printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
}

stage info 30 python3 -m anchordetr_trt.cli info
stage tests 575 python3 -m pytest -q -rs -m "gpu or tensorrt" --junitxml="$OUT/gpu_tests.xml" tests
stage check 240 python3 -m anchordetr_trt.cli check --out "$OUT/check"
stage bench-ops 45 python3 scripts/bench_ops.py --out "$OUT"
stage parity 90 python3 scripts/gpu_parity.py --out "$OUT"
# export_onnx on this machine's torch (CI covers 2.14) and onnxruntime parity: onnx, onnxscript and
# onnxruntime must be importable (preinstalled on the GPU machine this project was built on).
stage onnx 300 python3 scripts/gpu_onnx.py --out "$OUT"
stage stream 590 python3 -m anchordetr_trt.bench.stream --out "$OUT" --random-budget-s 380 --commit "${GIT_COMMIT:-unknown}"
# Last: its report is saved after each backend, so a cut-off run keeps what it measured.
stage bench 560 python3 -m anchordetr_trt.cli bench --out "$OUT/bench" --cache-dir .cache/bench
# The per-part TFLOP/s (a compile of each part): with the baselines they overrun one 10-minute call.
stage parts 560 python3 -m anchordetr_trt.cli bench --out "$OUT/parts" --cache-dir .cache/bench --parts \
    --backends inductor --batch 8 --no-startup
# Not in the default STAGES: the FFN epilogue on and off, side by side (STAGES=ffn-ab).
stage ffn-ab 300 python3 scripts/ab_ffn_epilogue.py --out "$OUT"
# A trained model (reused when .cache/train holds one), then FP16/BF16 accuracy on its val split.
stage train 480 python3 scripts/train_synthetic.py --out "$OUT" --budget-min 7.5
stage accuracy 240 python3 scripts/gpu_accuracy.py --out "$OUT"
tail -n 60 "$OUT/gpu.log"
cat "$OUT/summary.txt"

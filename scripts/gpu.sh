#!/usr/bin/env bash
# Every GPU check and benchmark in one call (`make gpu`), on a machine with torch preinstalled and no
# network. $OUT (default out/gpu) receives one result set, named as results/<gpu>/ holds it:
#   environment.json  gpu_tests.xml  check.json  bench_ops.json  parity.json parity.md  onnx.json  stream.json
#   bench.json bench.png profile.json profile.txt  bench_parts.json  train.json  accuracy.json accuracy.md
#   runs.tsv (stage, commit, files, command of each stage that ran)
#   and, with AB_OLD=<a checkout of another commit> and STAGES=ab, ab_<AB_NAME>_old.json and _new.json
#   (`python -m scripts.ab_trees OLD NEW` writes two commits' trees to .cache/ab for AB_OLD and AB_NEW)
#   (AB_NAME names the change, default "transformer"; AB_NEW=<another checkout> for the new side;
#   AB_MODEL_ONLY=1 leaves out the ops timed alone, most of a side's time, for a change of the model,
#   here and in ab-options);
#   with AB_OPTIONS='<JSON>' (Inductor settings) or AB_RCDA='<JSON>' (rcda_aggregate's launch
#   constants) and STAGES=ab-options, ab_options_old.json (the tree's own) and _new.json (those
#   settings); with STAGES=ops,
#   ops_microbench.json; with STAGES=warm, warm_kernels.json; with STAGES=ncu-rcda, ncu_rcda_{encoder,decoder}{,_sass}.csv, _stalls.json (scripts/ncu_stalls.py) and .ncu-rep
# and $OUT/logs/ (gpu.log, summary.txt, results.md: the table of results/README.md for this run).
# To update results/: copy $OUT's files (not logs/) into results/<gpu>/, merging runs.tsv's lines, then
# `python -m scripts.results_table results/h100 results/h200 --write results/README.md`.
# Each stage has its own time limit, cut to what is left of GPU_BUDGET_S (default 575 s, one call of
# the GPU machine this project is measured on: raise it where there is no such limit); a stage is
# interrupted (SIGINT) 10 s before its limit and killed at it; a stage that fails does not stop the
# next one. STAGES="tests bench" runs a subset (e.g. to finish on a second call; the compile cache is
# kept). Training (7.5 min) and the trained-model accuracy check (~4 min) fill calls of their own on a
# machine with a 10-minute call limit: STAGES=train, then at once STAGES=accuracy (the checkpoint
# stays in .cache/train only while the machine is held); or both in one call with a shorter training,
# TRAIN_BUDGET_MIN=4.5 STAGES="train accuracy" GPU_BUDGET_S=590.
# pycocotools must be importable: carry its wheel in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
LOGS=$OUT/logs
WORK=$PWD/.cache/gpu_work  # the CLI's own output folders; their result files are copied to $OUT
mkdir -p "$OUT" "$LOGS" "$WORK"
export PYTHONUNBUFFERED=1
# The code's commit for the reports: pass COMMIT=$(git rev-parse --short HEAD) (the copied tree's .git may be stale).
export GIT_COMMIT=${COMMIT:-${GIT_COMMIT:-}}
COMMIT_SHOWN=${GIT_COMMIT:-unknown}
# Compiled kernels and graphs are cached in the work tree, which a warm machine keeps between calls.
export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/inductor TRITON_CACHE_DIR=$PWD/.cache/triton

if ! python3 -c "import anchordetr_trt" 2>/dev/null; then
    site=/tmp/anchordetr_site
    wheels=$(ls .whl/*.whl 2>/dev/null || true)  # e.g. pycocotools for the machine's Python
    if ! python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target "$site" $wheels .; then
        # pyproject.toml's SPDX license string needs setuptools >= 77 (no build isolation here).
        echo "install failed (setuptools $(python3 -c 'import setuptools; print(setuptools.__version__)' 2>&1))" \
            | tee "$LOGS/summary.txt"
        exit 1
    fi
    export PYTHONPATH=$site
fi
# Each stage's Python processes dump their threads' stacks shortly before the stage's interrupt
# (scripts/gpu_site/sitecustomize.py): where a cut-off stage was, even in native code.
export GPU_SITE=$PWD/scripts/gpu_site  # also for the A/B's sides, which set their own PYTHONPATH
export PYTHONPATH=$GPU_SITE${PYTHONPATH:+:$PYTHONPATH}

: > "$LOGS/summary.txt"
[[ -f $OUT/runs.tsv ]] || printf 'stage\tcommit\tfiles\tcommand\n' > "$OUT/runs.tsv"
BUDGET=${GPU_BUDGET_S:-575}
STAGE_GRACE_S=10  # between a stage's interrupt and its kill
STACKS_BEFORE_INT_S=5  # between its Python processes' stack dumps and its interrupt
STAGES=${STAGES:-info tests check bench-ops parity onnx stream bench parts train accuracy}
selected() { [[ " $STAGES " == *" $1 "* ]]; }
stage() {  # stage NAME SECONDS FILES COMMAND...: run COMMAND (under the stage's limit) if NAME is selected
    local name=$1 limit=$2 files=$3 start=$SECONDS
    shift 3
    selected "$name" || return 0
    local left=$((BUDGET - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 2 * STAGE_GRACE_S)); then
        printf '%-10s skipped: the %ss budget is spent\n' "$name" "$BUDGET" | tee -a "$LOGS/summary.txt"
        return 0
    fi
    echo "=== $name ($(date -u +%T), limit ${limit}s)" >> "$LOGS/gpu.log"
    # Interrupted STAGE_GRACE_S before its limit, killed at it: a pytest run interrupted so writes its
    # junit file with the tests done and names the one it was in, a script prints where it was. Before
    # the interrupt, the stage's Python processes write their stacks (even those stuck in native code).
    local interrupt_after=$((limit - STAGE_GRACE_S))
    ANCHORDETR_STACKS_AT=$(($(date +%s) + interrupt_after - STACKS_BEFORE_INT_S)) \
        timeout --signal=INT --kill-after=$STAGE_GRACE_S "$interrupt_after" "$@" >> "$LOGS/gpu.log" 2>&1
    local rc=$?
    printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$LOGS/summary.txt"
    local command="" arg  # as results/README.md shows it: one line, folders by name, arguments with
    for arg in "$@"; do   # spaces or quotes in single quotes (unless they hold one)
        [[ $arg == *[[:space:]\"]* && $arg != *\'* ]] && arg="'$arg'"
        command+="${command:+ }$arg"
    done
    command=${command//$'\\\n'/ } command=${command//$'\n'/ } command=${command//$'\t'/ } command=${command//$OUT/OUT}
    printf '%s\t%s\t%s\t%s\n' "$name" "$COMMIT_SHOWN" "$files" "${command//$WORK/.cache/gpu_work}" >> "$OUT/runs.tsv"
}
collect() {  # collect NAME DIR SRC[:DEST]...: copy a selected stage's files from DIR into $OUT (as DEST)
    local name=$1 dir=$2 pair
    shift 2
    selected "$name" || return 0
    for pair in "$@"; do
        [[ -f $dir/${pair%%:*} ]] && cp "$dir/${pair%%:*}" "$OUT/${pair##*:}"
    done
    return 0
}

# Versions, GPU and which backends run here (also in gpu.log); nvidia-smi's clocks and power limit too.
INFO='python3 -m anchordetr_trt.cli info --json > "$0" && cat "$0"; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv'
stage info 40 environment.json sh -c "$INFO" "$OUT/environment.json"
stage tests 575 gpu_tests.xml python3 -m pytest -q -rs -m "gpu or tensorrt" --junitxml="$OUT/gpu_tests.xml" tests
stage check 240 check.json python3 -m anchordetr_trt.cli check --out "$WORK/check"
collect check "$WORK/check" check.json
stage bench-ops 55 bench_ops.json python3 -m scripts.bench_ops --out "$OUT"
stage parity 90 "parity.json parity.md" python3 -m scripts.gpu_parity --out "$OUT"
# export_onnx on this machine's torch (CI covers 2.14) and onnxruntime parity: onnx, onnxscript and
# onnxruntime must be importable (preinstalled on the GPU machine this project is measured on).
stage onnx 300 onnx.json python3 -m scripts.gpu_onnx --out "$OUT"
stage stream 590 stream.json python3 -m anchordetr_trt.bench.stream --out "$OUT" --random-budget-s 380 \
    --commit "$COMMIT_SHOWN"
# Late: its report is saved after each backend, so a cut-off run keeps what it measured.
stage bench 560 "bench.json bench.png profile.json profile.txt" \
    python3 -m anchordetr_trt.cli bench --out "$WORK/bench" --cache-dir .cache/bench
collect bench "$WORK/bench" bench.json bench.png profile.json profile.txt
# The per-part TFLOP/s (a compile of each part): with the baselines they overrun one 10-minute call.
stage parts 560 bench_parts.json python3 -m anchordetr_trt.cli bench --out "$WORK/parts" --cache-dir .cache/bench \
    --parts --backends inductor --batch 8 --no-startup
collect parts "$WORK/parts" bench.json:bench_parts.json
# The transformer against another code tree, in one call: AB_OLD is a checkout of the commit to compare
# with (AB_OLD_COMMIT names its commit where AB_OLD is not a git checkout, e.g. a `git archive`), AB_NEW
# (with AB_NEW_COMMIT) one for the other side where that is not this tree; both trees run this tree's
# scripts/ab_transformer.py (its outputs_*.pt stay in the work folder, emptied first so that no earlier
# A/B's file is taken for this one's).
AB_FLAGS=""
[[ ${AB_MODEL_ONLY:-0} == 1 ]] && AB_FLAGS=" --ops"  # no op alone: the model only
AB='rm -rf "$3" /tmp/ab_old_site /tmp/ab_new_site &&
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_old_site "$1" &&
old=${AB_OLD_COMMIT:-$(git -C "$1" rev-parse --short HEAD 2>/dev/null || echo unknown)} &&
PYTHONPATH=/tmp/ab_old_site:$GPU_SITE python3 "$2" --out "$3" --tag old --commit "$old"'"$AB_FLAGS"' &&
if [ -n "$5" ]; then
    python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/ab_new_site "$5" &&
    export PYTHONPATH=/tmp/ab_new_site:$GPU_SITE
fi &&
python3 "$2" --out "$3" --tag new --commit "$4" --previous "$3/outputs_old.pt"'"$AB_FLAGS"
if [[ -n ${AB_OLD:-} ]]; then
    AB_NAME=${AB_NAME:-transformer}
    new_commit=$COMMIT_SHOWN  # the new side's, in the report and in runs.tsv
    [[ -n ${AB_NEW:-} ]] && new_commit=${AB_NEW_COMMIT:-$(git -C "$AB_NEW" rev-parse --short HEAD 2>/dev/null || echo unknown)}
    COMMIT_SHOWN=$new_commit stage ab 420 "ab_${AB_NAME}_old.json ab_${AB_NAME}_new.json" \
        sh -c "$AB" sh "$AB_OLD" "$PWD/scripts/ab_transformer.py" "$WORK/ab" "$new_commit" ${AB_NEW:+"$AB_NEW"}
    collect ab "$WORK/ab" "ab_transformer_old.json:ab_${AB_NAME}_old.json" "ab_transformer_new.json:ab_${AB_NAME}_new.json"
elif selected ab; then
    printf '%-10s skipped: set AB_OLD to a checkout of the commit to compare with\n' ab | tee -a "$LOGS/summary.txt"
fi
# Inductor's settings or rcda_aggregate's launch constants against the tree's own, in this tree and one
# call: AB_OPTIONS is a JSON object of torch._inductor.config settings, e.g. '{"triton.enable_pdl": true}'
# (not those the backend sets itself), AB_RCDA one of the op's constants, e.g. '{"MAX_STAGES": 4}'.
AB_SETTINGS='python3 "$1" --out "$2" --tag old --commit "$3" --part-batches'"$AB_FLAGS"' &&
python3 "$1" --out "$2" --tag new --commit "$3" --part-batches --inductor-options "$4" --rcda-constants "$5" \
    --previous "$2/outputs_old.pt"'"$AB_FLAGS"
if [[ -n ${AB_OPTIONS:-} || -n ${AB_RCDA:-} ]]; then
    none='{}'
    stage ab-options 300 "ab_options_old.json ab_options_new.json" \
        sh -c "$AB_SETTINGS" sh "$PWD/scripts/ab_transformer.py" "$WORK/ab-options" "$COMMIT_SHOWN" \
        "${AB_OPTIONS:-$none}" "${AB_RCDA:-$none}"
    collect ab-options "$WORK/ab-options" "ab_transformer_old.json:ab_options_old.json" "ab_transformer_new.json:ab_options_new.json"
elif selected ab-options; then
    printf '%-10s skipped: set AB_OPTIONS (Inductor settings) or AB_RCDA (rcda_aggregate constants) as JSON\n' ab-options \
        | tee -a "$LOGS/summary.txt"
fi
# The custom ops alone, with other launch configurations, the images' preparation and the heads' products
# (not by default).
stage ops 200 ops_microbench.json python3 -m scripts.ab_transformer --out "$WORK/ops" --tag ops --ops-only \
    --commit "$COMMIT_SHOWN"
collect ops "$WORK/ops" ab_transformer_ops.json:ops_microbench.json
# The custom kernels' warm-up of compile(), cold, one after another against the default threads
# (not by default).
stage warm 200 warm_kernels.json python3 -m scripts.warm_time --out "$OUT" --commit "$COMMIT_SHOWN"
# rcda_aggregate's kernel under Nsight Compute at batch 8 (not by default): the encoder's and the
# decoder's call, each profiled once after scripts/profile_rcda.py's warm-up (the profiler leaves the
# clocks alone). Summary (stall reasons, pipes, occupancy) and SASS with its stalls per instruction as
# CSV, the report itself too. NCU names the profiler where it is not found.
NCU=${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | sort -V | tail -n 1)}
NCU_RCDA='for part in encoder decoder; do
rm -f "$2/ncu_rcda_$part.ncu-rep" "$3/ncu_rcda_$part.csv" "$3/ncu_rcda_${part}_sass.csv" "$3/ncu_rcda_${part}_stalls.json" &&
"$1" --clock-control none --kernel-name rcda_aggregate_kernel --launch-skip "$4" --launch-count 1 --set detailed \
    --section SourceCounters -f -o "$2/ncu_rcda_$part" python3 -m scripts.profile_rcda --batch 8 --parts "$part" \
    --warmup "$4" && "$1" --import "$2/ncu_rcda_$part.ncu-rep" --csv --page details > "$2/details.csv" &&
"$1" --import "$2/ncu_rcda_$part.ncu-rep" --csv --page source --print-source sass > "$2/sass.csv" &&
mv "$2/details.csv" "$3/ncu_rcda_$part.csv" && mv "$2/sass.csv" "$3/ncu_rcda_${part}_sass.csv" &&
python3 -m scripts.ncu_stalls "$3/ncu_rcda_${part}_sass.csv" --out "$3/ncu_rcda_${part}_stalls.json" &&
cp "$2/ncu_rcda_$part.ncu-rep" "$3/" || exit 1
done'
if [[ -n $NCU ]]; then
    stage ncu-rcda 300 "ncu_rcda_encoder.csv ncu_rcda_decoder.csv ncu_rcda_encoder_sass.csv ncu_rcda_decoder_sass.csv ncu_rcda_encoder_stalls.json ncu_rcda_decoder_stalls.json" \
        sh -c "$NCU_RCDA" sh "$NCU" "$WORK" "$OUT" 2  # 2: the calls skipped, profile_rcda's warm-up
elif selected ncu-rcda; then
    printf '%-10s skipped: Nsight Compute not found: set NCU to its ncu\n' ncu-rcda | tee -a "$LOGS/summary.txt"
fi
# A trained model (reused when .cache/train holds one), then FP16/BF16 accuracy on its val split
# (ACCURACY_CONFIGS: a comma-separated subset of scripts/gpu_accuracy.py's configurations).
stage train 480 train.json python3 -m scripts.train_synthetic --out "$OUT" --budget-min "${TRAIN_BUDGET_MIN:-7.5}"
stage accuracy 240 "accuracy.json accuracy.md" python3 -m scripts.gpu_accuracy --out "$OUT" \
    ${ACCURACY_CONFIGS:+--configs "$ACCURACY_CONFIGS"}

python3 -m scripts.results_table "$OUT" > "$LOGS/results.md" 2>> "$LOGS/gpu.log"
tail -n 60 "$LOGS/gpu.log"
cat "$LOGS/summary.txt"

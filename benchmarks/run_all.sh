#!/usr/bin/env bash
# Regenerate every file of benchmarks/results/ on the CPU, in one command:
#
#   THREADS=2 benchmarks/run_all.sh            # the committed results (2 threads; about 2 hours on the
#                                              # idle 2-core machine of the README, most of it compiling)
#
# It runs, each writing a .json (records + machine, with the load at its start and end) and a .txt
# (the table printed): the module bench (every module at the three shapes of issue 6, inference and
# training, against timm: modules_{infer,train}_cpu), the compile bench (the modules with fast paths:
# ours, the formula eager and compiled, timm eager and compiled: modules_compile_{infer,train}_cpu),
# the model bench (resnet20 and resnet50 with none, se, eca, cbam at batch 8: models_cpu), the model
# overhead (benchmarks/model_overhead.py: resnet20 at batch 128 and resnet50 at batch 16, ours and
# timm's, eager and compiled: model_overhead_cpu), CBAM's native kernel (cbam_native.py:
# cbam_native_cpu.txt) and every fast implementation against the formula, eager and compiled
# (fast_paths.py: fast_paths_cpu.txt, the figures behind the keep-or-delete rule of the README). Run it on an idle machine: the timings of a busy one are not comparable (the
# bench warns). On a GPU, use benchmarks/gpu.sh.
#
#   benchmarks/run_all.sh                      # threads chosen from the load (see README)
#   MODULES=se,ese,eca,cbam,sk MODES=infer SKIP_COMPILE=1 SKIP_OVERHEAD=1 benchmarks/run_all.sh   # a subset
#   PRINT_ONLY=1 benchmarks/run_all.sh         # print the commands, run nothing (tests/test_bench.py)
#
# Variables: PYTHON (default .venv/bin/python, else python3), DEVICE (cpu), THREADS (empty: the
# thread rule of chanattn.training.threads), REPEATS (15), MODULES (all), SHAPES (the issue's three),
# MODES ("infer train"), COMPILE_MODULES (the modules with a fast implementation in chanattn.fast), MODELS
# (resnet20,resnet50), ATTN (none,se,eca,cbam), MODEL_BATCH (8), MODEL_REPEATS (3), OVERHEAD_REPEATS
# (3), SKIP_MODULES, SKIP_COMPILE, SKIP_MODELS, SKIP_OVERHEAD, SKIP_NATIVE, SKIP_FAST (1: skip that part), OUT
# (benchmarks/results), PRINT_ONLY.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cpu}
REPEATS=${REPEATS:-15}
MODULES=${MODULES:-all}
SHAPES=${SHAPES:-32x64x56x56,32x256x14x14,32x512x7x7}
MODES=${MODES:-infer train}
COMPILE_MODULES=${COMPILE_MODULES:-c3,cbam,cbam_channel,cbam_spatial,eca,encnet,gsop,rcan_ca,se,se_var2,se_var3,sk,soca}
OVERHEAD_REPEATS=${OVERHEAD_REPEATS:-3}
MODELS=${MODELS:-resnet20,resnet50}
ATTN=${ATTN:-none,se,eca,cbam}
MODEL_BATCH=${MODEL_BATCH:-8}
MODEL_REPEATS=${MODEL_REPEATS:-3}
OUT=${OUT:-benchmarks/results}
common=(--device "$DEVICE")
if [[ -n "${THREADS:-}" ]]; then common+=(--threads "$THREADS"); fi
if [[ "${PRINT_ONLY:-0}" != 1 ]]; then mkdir -p "$OUT"; fi

run() {  # run NAME COMMAND...: run it, tee what it prints to OUT/NAME.txt (NAME -: the command
         # writes its own .txt); PRINT_ONLY: print the command instead
    local name=$1
    shift
    if [[ "${PRINT_ONLY:-0}" == 1 ]]; then
        printf '%q ' "$@"
        if [[ "$name" == - ]]; then echo; else echo "| tee $OUT/$name.txt"; fi
    elif [[ "$name" == - ]]; then
        "$@"
    else
        "$@" | tee "$OUT/$name.txt"
    fi
}

if [[ "${SKIP_MODULES:-0}" != 1 ]]; then
    for mode in $MODES; do
        run "modules_${mode}_${DEVICE}" "$PYTHON" -m chanattn bench --modules "$MODULES" --shapes "$SHAPES" \
            --mode "$mode" --vs timm --repeats "$REPEATS" "${common[@]}" --out "$OUT/modules_${mode}_${DEVICE}.json"
    done
fi

if [[ "${SKIP_COMPILE:-0}" != 1 ]]; then
    for mode in $MODES; do
        run "modules_compile_${mode}_${DEVICE}" "$PYTHON" -m chanattn bench --modules "$COMPILE_MODULES" \
            --shapes "$SHAPES" --mode "$mode" --vs timm --compile --repeats "$REPEATS" "${common[@]}" \
            --out "$OUT/modules_compile_${mode}_${DEVICE}.json"
    done
fi

if [[ "${SKIP_MODELS:-0}" != 1 ]]; then
    run "models_${DEVICE}" "$PYTHON" -m chanattn bench --models "$MODELS" --attn "$ATTN" --batch "$MODEL_BATCH" \
        --repeats "$MODEL_REPEATS" "${common[@]}" --out "$OUT/models_${DEVICE}.json"
fi

if [[ "${SKIP_OVERHEAD:-0}" != 1 ]]; then
    overhead_args=(--device "$DEVICE" --models "$MODELS" --attn "$ATTN" --repeats "$OVERHEAD_REPEATS" --out-dir "$OUT")
    if [[ -n "${THREADS:-}" ]]; then overhead_args+=(--threads "$THREADS"); fi
    # model_overhead.py writes its .txt itself (also the rows printed before an interruption)
    run - "$PYTHON" benchmarks/model_overhead.py "${overhead_args[@]}"
fi

# CBAM's native operator against the formula and timm (CPU only).
if [[ "$DEVICE" == cpu && "${SKIP_NATIVE:-0}" != 1 ]]; then
    native_args=(--repeats "$REPEATS")
    if [[ -n "${THREADS:-}" ]]; then native_args+=(--threads "$THREADS"); fi
    run cbam_native_cpu "$PYTHON" benchmarks/cbam_native.py --shapes "$SHAPES" "${native_args[@]}"
fi

# Every fast implementation against the formula in eager mode and compiled (CPU only).
if [[ "$DEVICE" == cpu && "${SKIP_FAST:-0}" != 1 ]]; then
    fast_args=(--out "$OUT/fast_paths_cpu.txt")
    if [[ -n "${THREADS:-}" ]]; then fast_args+=(--threads "$THREADS"); fi
    # fast_paths.py writes its .txt itself
    run - "$PYTHON" benchmarks/fast_paths.py "${fast_args[@]}"
fi

#!/usr/bin/env bash
# Regenerate benchmarks/results/ on the CPU: the module bench (every module at the three shapes of
# issue 6, inference and training, against timm), the compile bench (the modules with fast paths:
# ours, the formula eager and compiled, timm eager and compiled), the model bench (resnet20 and
# resnet50 with none, se, eca, cbam at batch 8) and the model overhead (benchmarks/model_overhead.py:
# resnet20 at batch 128 and resnet50 at batch 16, ours and timm's, eager and compiled). Each run writes
# a .json (records + machine) and a .txt (the table). On a GPU, use benchmarks/gpu.sh.
#
#   benchmarks/run_all.sh                      # CPU, threads chosen from the load (see README)
#   THREADS=1 benchmarks/run_all.sh            # one thread (steadier on a busy machine)
#   MODULES=se,ese,eca,cbam,sk MODES=infer SKIP_COMPILE=1 SKIP_OVERHEAD=1 benchmarks/run_all.sh   # a subset
#
# Variables: PYTHON (default .venv/bin/python, else python3), DEVICE (cpu), THREADS (empty: the
# bench's rule), REPEATS (15), MODULES (all), SHAPES (the issue's three), MODES ("infer train"),
# COMPILE_MODULES (the modules with a forward_reference), MODELS (resnet20,resnet50),
# ATTN (none,se,eca,cbam), MODEL_BATCH (8), MODEL_REPEATS (3), OVERHEAD_REPEATS (3),
# SKIP_MODULES, SKIP_COMPILE, SKIP_MODELS, SKIP_OVERHEAD, SKIP_NATIVE (1: skip that part), OUT (benchmarks/results).
# Run time on the idle 2-core machine of the README: see benchmarks/README.md (about 2 hours in all,
# most of it compiling).
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
COMPILE_MODULES=${COMPILE_MODULES:-bam,bilinear,c3,cbam,cbam_channel,cbam_spatial,eca,encnet,gsop,rcan_ca,se,se_var1,se_var2,se_var3,sk}
OVERHEAD_REPEATS=${OVERHEAD_REPEATS:-3}
MODELS=${MODELS:-resnet20,resnet50}
ATTN=${ATTN:-none,se,eca,cbam}
MODEL_BATCH=${MODEL_BATCH:-8}
MODEL_REPEATS=${MODEL_REPEATS:-3}
OUT=${OUT:-benchmarks/results}
common=(--device "$DEVICE")
if [[ -n "${THREADS:-}" ]]; then common+=(--threads "$THREADS"); fi
mkdir -p "$OUT"

if [[ "${SKIP_MODULES:-0}" != 1 ]]; then
    for mode in $MODES; do
        name="$OUT/modules_${mode}_${DEVICE}"
        "$PYTHON" -m chanattn bench --modules "$MODULES" --shapes "$SHAPES" --mode "$mode" --vs timm \
            --repeats "$REPEATS" "${common[@]}" --out "$name.json" | tee "$name.txt"
    done
fi

if [[ "${SKIP_COMPILE:-0}" != 1 ]]; then
    for mode in $MODES; do
        name="$OUT/modules_compile_${mode}_${DEVICE}"
        "$PYTHON" -m chanattn bench --modules "$COMPILE_MODULES" --shapes "$SHAPES" --mode "$mode" --vs timm \
            --compile --repeats "$REPEATS" "${common[@]}" --out "$name.json" | tee "$name.txt"
    done
fi

if [[ "${SKIP_MODELS:-0}" != 1 ]]; then
    name="$OUT/models_${DEVICE}"
    "$PYTHON" -m chanattn bench --models "$MODELS" --attn "$ATTN" --batch "$MODEL_BATCH" \
        --repeats "$MODEL_REPEATS" "${common[@]}" --out "$name.json" | tee "$name.txt"
fi

if [[ "${SKIP_OVERHEAD:-0}" != 1 ]]; then
    overhead_args=(--device "$DEVICE" --models "$MODELS" --attn "$ATTN" --repeats "$OVERHEAD_REPEATS" --out-dir "$OUT")
    if [[ -n "${THREADS:-}" ]]; then overhead_args+=(--threads "$THREADS"); fi
    "$PYTHON" benchmarks/model_overhead.py "${overhead_args[@]}"
fi

# CBAM's native kernel against the PyTorch path it replaces and timm (CPU only).
if [[ "$DEVICE" == cpu && "${SKIP_NATIVE:-0}" != 1 ]]; then
    native_args=(--repeats "$REPEATS")
    if [[ -n "${THREADS:-}" ]]; then native_args+=(--threads "$THREADS"); fi
    "$PYTHON" benchmarks/cbam_native.py --shapes "$SHAPES" "${native_args[@]}" | tee "$OUT/cbam_native_cpu.txt"
fi

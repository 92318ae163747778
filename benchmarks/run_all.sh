#!/usr/bin/env bash
# Regenerate benchmarks/results/: the module bench (every module at the three shapes of issue 6,
# inference and training, against timm) and the model bench (resnet20 and resnet50 with
# none, se, eca, cbam). Each run writes a .json (records + machine) and a .txt (the table).
#
#   benchmarks/run_all.sh                      # CPU, torch's default threads
#   THREADS=1 benchmarks/run_all.sh            # one thread (steadier on a busy machine)
#   DEVICE=cuda OUT=benchmarks/results/gpu benchmarks/run_all.sh
#   MODULES=se,ese,eca,cbam,sk MODES=infer benchmarks/run_all.sh   # a subset
#
# Variables: PYTHON (default .venv/bin/python, else python3), DEVICE (cpu), THREADS (empty: torch's
# default), REPEATS (15), MODULES (all), SHAPES (the issue's three), MODES ("infer train"),
# MODELS (resnet20,resnet50), ATTN (none,se,eca,cbam), MODEL_BATCH (8), MODEL_REPEATS (3),
# SKIP_MODELS (set to 1 to skip the model bench), SKIP_NATIVE (1: skip benchmarks/cbam_native.py),
# OUT (benchmarks/results).
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
MODELS=${MODELS:-resnet20,resnet50}
ATTN=${ATTN:-none,se,eca,cbam}
MODEL_BATCH=${MODEL_BATCH:-8}
MODEL_REPEATS=${MODEL_REPEATS:-3}
OUT=${OUT:-benchmarks/results}
common=(--device "$DEVICE")
if [[ -n "${THREADS:-}" ]]; then common+=(--threads "$THREADS"); fi
mkdir -p "$OUT"

for mode in $MODES; do
    name="$OUT/modules_${mode}_${DEVICE}"
    "$PYTHON" -m chanattn bench --modules "$MODULES" --shapes "$SHAPES" --mode "$mode" --vs timm \
        --repeats "$REPEATS" "${common[@]}" --out "$name.json" | tee "$name.txt"
done

if [[ "${SKIP_MODELS:-0}" != 1 ]]; then
    name="$OUT/models_${DEVICE}"
    "$PYTHON" -m chanattn bench --models "$MODELS" --attn "$ATTN" --batch "$MODEL_BATCH" \
        --repeats "$MODEL_REPEATS" "${common[@]}" --out "$name.json" | tee "$name.txt"
fi

# CBAM's native operator against the formula and timm (CPU only).
if [[ "$DEVICE" == cpu && "${SKIP_NATIVE:-0}" != 1 ]]; then
    native_args=(--repeats "$REPEATS")
    if [[ -n "${THREADS:-}" ]]; then native_args+=(--threads "$THREADS"); fi
    "$PYTHON" benchmarks/cbam_native.py --shapes "$SHAPES" "${native_args[@]}" | tee "$OUT/cbam_native_cpu.txt"
fi

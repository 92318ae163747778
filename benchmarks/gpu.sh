#!/usr/bin/env bash
# The bench on a CUDA GPU in under 8 minutes, results in benchmarks/results/*_cuda.*:
#   1. modules_{infer,train}_cuda         every module at the three shapes of issue 6, against timm (eager)
#   2. modules_compile_{infer,train}_cuda  se, eca, cbam: ours, the formula eager and compiled, timm
#                                          eager and compiled (--compile --vs timm)
#   3. model_overhead_cuda                resnet20 (batch 128) and resnet50 (batch 16) with none,se,cbam:
#                                          training-step and inference overhead over the backbone, ours
#                                          and timm's, eager and compiled, one interleaved run per model
#
#   benchmarks/gpu.sh                  # on a machine with a CUDA GPU
#   DRY_RUN=1 benchmarks/gpu.sh        # the check: the same commands on the CPU at tiny sizes (~40 s idle)
#   PRINT_ONLY=1 benchmarks/gpu.sh     # print the commands, run nothing (tests/test_bench.py parses them)
#
# torch.compile dominates the time (every model variant is compiled for training and inference), so
# the GPU run compiles fewer modules than the CPU one. Each step has a time budget in seconds
# (BUDGET_MODULES_INFER 35, BUDGET_MODULES_TRAIN 45, BUDGET_COMPILE_INFER 50, BUDGET_COMPILE_TRAIN 70,
# BUDGET_MODELS 230: 430 s, under 8 minutes with the start-ups); a step that runs out is interrupted
# (SIGINT), keeps the records finished so far (its .json says "interrupted": true) and the script
# names it at the end (exit 3). The budgets are estimates made without a GPU at hand: the compile_s
# column of the results says what compilation took, to size them again.
#
# DRY_RUN=1 runs every step's command on the CPU (DEVICE=cpu) at tiny sizes (modules se,eca,cbam at
# 2x16x8x8; compile se with backend eager; resnet8 with none,se at batch 2; 2 repeats) into a
# temporary folder (or OUT when given), each step with a budget of 600 s, then checks that each step
# wrote its table and a JSON with records and was not interrupted; it exits 0 and says "dry run
# passed", else non-zero. Nothing in benchmarks/results is touched, and no GPU is needed.
#
# Variables: PYTHON (default .venv/bin/python, else python3), DEVICE (cuda), OUT (benchmarks/results),
# REPEATS (10), MODULES (all), COMPILE_MODULES (se,eca,cbam), SHAPES, MODELS (resnet20,resnet50),
# ATTN (none,se,cbam), MODEL_REPEATS (10), COMPILE_BACKEND (inductor), BUDGET_* (above), DRY_RUN,
# PRINT_ONLY.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cuda}
out_given=${OUT:-}
OUT=${OUT:-benchmarks/results}
REPEATS=${REPEATS:-10}
MODULES=${MODULES:-all}
COMPILE_MODULES=${COMPILE_MODULES:-se,eca,cbam}
SHAPES=${SHAPES:-32x64x56x56,32x256x14x14,32x512x7x7}
MODELS=${MODELS:-resnet20,resnet50}
ATTN=${ATTN:-none,se,cbam}
MODEL_REPEATS=${MODEL_REPEATS:-10}
COMPILE_BACKEND=${COMPILE_BACKEND:-inductor}
BUDGET_MODULES_INFER=${BUDGET_MODULES_INFER:-35}
BUDGET_MODULES_TRAIN=${BUDGET_MODULES_TRAIN:-45}
BUDGET_COMPILE_INFER=${BUDGET_COMPILE_INFER:-50}
BUDGET_COMPILE_TRAIN=${BUDGET_COMPILE_TRAIN:-70}
BUDGET_MODELS=${BUDGET_MODELS:-230}
model_extra=()
bench_extra=()
tmp_out=""
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    DEVICE=cpu; MODULES=se,eca,cbam; COMPILE_MODULES=se; SHAPES=2x16x8x8; REPEATS=2; MODEL_REPEATS=2
    MODELS=resnet8; ATTN=none,se; COMPILE_BACKEND=eager; model_extra=(--batch 2)
    bench_extra=(--warmup 1 --min-time 0.001)
    # it checks the commands, not the budgets: a busy CPU may take minutes
    BUDGET_MODULES_INFER=600; BUDGET_MODULES_TRAIN=600; BUDGET_COMPILE_INFER=600; BUDGET_COMPILE_TRAIN=600
    BUDGET_MODELS=600
    if [[ -z "$out_given" ]]; then
        tmp_out=$(mktemp -d); OUT=$tmp_out
        trap 'rm -rf "$tmp_out"' EXIT
    fi
fi
if [[ "${PRINT_ONLY:-0}" != 1 && "$DEVICE" == cuda ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu.sh: no CUDA device here (DRY_RUN=1 checks the commands on the CPU)" >&2
    exit 2
fi
if [[ "${PRINT_ONLY:-0}" != 1 ]]; then mkdir -p "$OUT"; fi
cut=()
steps=()
started=$SECONDS

step() {  # step BUDGET NAME COMMAND...: run with a time budget, tee the table to OUT/NAME.txt
    local budget=$1 name=$2
    shift 2
    steps+=("$name")
    echo "== $name (budget ${budget} s)" >&2
    if [[ "${PRINT_ONLY:-0}" == 1 ]]; then
        printf '%q ' "$@"
        echo
        return
    fi
    timeout -s INT -k 10 "$budget" "$@" | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [[ $rc == 124 || $rc == 130 ]]; then
        cut+=("$name")
    elif [[ $rc != 0 ]]; then
        echo "gpu.sh: $name failed (exit $rc)" >&2
        exit "$rc"
    fi
}

budget() { local var="BUDGET_$1_${2^^}"; echo "${!var}"; }

for mode in infer train; do
    step "$(budget MODULES "$mode")" "modules_${mode}_${DEVICE}" "$PYTHON" -m chanattn bench --device "$DEVICE" \
        --modules "$MODULES" --shapes "$SHAPES" --mode "$mode" --vs timm --repeats "$REPEATS" \
        "${bench_extra[@]}" --out "$OUT/modules_${mode}_${DEVICE}.json"
done
for mode in infer train; do
    step "$(budget COMPILE "$mode")" "modules_compile_${mode}_${DEVICE}" "$PYTHON" -m chanattn bench --device "$DEVICE" \
        --modules "$COMPILE_MODULES" --shapes "$SHAPES" --mode "$mode" --vs timm --compile \
        --compile-backend "$COMPILE_BACKEND" --repeats "$REPEATS" "${bench_extra[@]}" \
        --out "$OUT/modules_compile_${mode}_${DEVICE}.json"
done
step "$BUDGET_MODELS" "model_overhead_${DEVICE}" "$PYTHON" -m chanattn bench --device "$DEVICE" \
    --models "$MODELS" --attn "$ATTN" --vs timm --compile --compile-backend "$COMPILE_BACKEND" \
    --repeats "$MODEL_REPEATS" "${model_extra[@]}" "${bench_extra[@]}" --out "$OUT/model_overhead_${DEVICE}.json"

if [[ "${PRINT_ONLY:-0}" == 1 ]]; then exit 0; fi
echo "gpu.sh: done in $((SECONDS - started)) s -> $OUT" >&2
if (( ${#cut[@]} )); then
    echo "gpu.sh: out of budget, interrupted (partial records kept): ${cut[*]}" >&2
    exit 3
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then  # every step wrote its table and its records, uninterrupted
    "$PYTHON" - "$OUT" "${steps[@]}" <<'PY' || exit 4
import json, sys
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    with open(f"{out}/{name}.json") as f:
        data = json.load(f)
    with open(f"{out}/{name}.txt") as f:
        table = f.read()
    if not data.get("records") or data.get("interrupted") or "wrote" not in table:
        sys.exit(f"gpu.sh: dry run: {name} wrote no complete records")
print(f"gpu.sh: dry run passed: {len(names)} steps wrote their records ({', '.join(names)})")
PY
fi

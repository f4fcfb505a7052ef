#!/usr/bin/env bash
# One-call GPU check (issue #18): the CUDA tests and the kernel and labelling benchmarks on one GPU, each
# step under its own time limit (about 7 minutes in all), every table written to OUT_DIR.
#
#   bash bench/gpu.sh [OUT_DIR]        # default gpu-report/; on a machine without CUDA: says so, exits 0
#
# OUT_DIR/summary.txt lists each step's exit status and seconds; OUT_DIR/<step>.txt holds its output.
# A step that fails or runs out of time is recorded and the next one still runs; the script exits 1 if any
# step failed. Set WSIS_PY to the Python command to use (default: `uv run --frozen python`).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu-report}
read -r -a PY <<< "${WSIS_PY:-uv run --frozen python}"

if ! "${PY[@]}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
mkdir -p "$OUT"
: > "$OUT/summary.txt"
"${PY[@]}" -c "import torch; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee "$OUT/device.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit}s)"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || failed=1
    printf '%-12s rc=%-3s %4ss%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" \
        "$([ "$rc" -eq 124 ] && echo '  (time limit)')" | tee -a "$OUT/summary.txt"
}

# the CUDA tests: kernel parity on the device (Triton vs reference), device resolution
step tests-cuda 150 "${PY[@]}" -m pytest -q -x tests/kernels tests/runtime/test_runtime_device.py
# the kernel benchmarks (ratios against their baselines, measured in the same run)
step crf 80 "${PY[@]}" bench/crf.py --device cuda --quick
step score-maps 50 "${PY[@]}" bench/score_maps.py --device cuda --quick
# labelling throughput: mal-label (images/s, bench/mal_label.py) and refine-crf on a synthetic set
step mal-label 80 "${PY[@]}" bench/mal_label.py --device cuda --images 64
step refine-crf 80 bash -c '
    set -e
    d=$(mktemp -d)
    '"${PY[*]}"' -m wsis_cli synth "$d/data" --num-images 64 --size 256x256 --seed 0 -q
    start=$(date +%s.%N)
    '"${PY[*]}"' -m wsis_cli refine-crf "$d/data/gt.json" -i "$d/data/images" -o "$d/refined.json" --device cuda -q
    end=$(date +%s.%N)
    python3 -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print(f\"refine-crf: 64 images of 256x256 in {s:.1f}s ({64 / s:.1f} images/s, with start-up)\")" "$start" "$end"
    rm -rf "$d"'

echo "tables in $OUT/ (summary.txt: exit status and seconds per step)"
exit $failed

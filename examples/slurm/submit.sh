#!/usr/bin/env bash
# Submit the labelling array, the merge that waits for it, and the student training that waits for both.
# Logs go to logs/ (created here: sbatch opens a job's log before the job starts and cannot create it).
#   bash examples/slurm/submit.sh boxes.json images/ mal-run/model.pt out/ 16
set -euo pipefail
BOXES=${1:?}; IMAGES=${2:?}; MODEL=${3:?}; OUT=${4:?}; SHARDS=${5:-16}
HERE=$(dirname "$0")
mkdir -p logs
ARRAY=$(sbatch --parsable --output='logs/%x-%A_%a.out' --array=0-$((SHARDS - 1)) \
  "$HERE/label_array.sbatch" "$BOXES" "$IMAGES" "$MODEL" "$OUT")
MERGE=$(sbatch --parsable --output='logs/%x-%j.out' --dependency=afterok:"$ARRAY" \
  "$HERE/merge.sbatch" "$OUT" "$OUT/masks.json" "$BOXES")
sbatch --output='logs/%x-%j.out' --dependency=afterok:"$MERGE" \
  "$HERE/train_student.sbatch" "$OUT/masks.json" "$IMAGES" "$OUT/student-run"

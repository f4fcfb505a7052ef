#!/usr/bin/env bash
# A whole wsis pipeline on synthetic data: every kind of cheap supervision → pseudo-labels → CRF refinement
# → a student trained on each → evaluation against the ground truth.
#
#   bash examples/pipeline.sh [OUT]          # defaults: 24 images of 128x128, CPU-sized models
#   N=200 SIZE=256x256 EPOCHS=10 bash examples/pipeline.sh runs/big   # bigger
#
# Everything it writes lands under OUT (default wsis-example/). Runs as written on a 2-core laptop in a few
# minutes; on a GPU node the same commands run with --device cuda (the default "auto" picks it).
set -euo pipefail

OUT=${1:-wsis-example}
N=${N:-24}
SIZE=${SIZE:-128x128}
EPOCHS=${EPOCHS:-3}
WSIS=${WSIS:-wsis}
D=$OUT/data
mkdir -p "$OUT"

# 0. data: images + ground truth (gt.json) + the cheap labels derived from it (boxes.json, labels.json)
$WSIS synth "$D" -n "$N" --size "$SIZE" --classes 3 --seed 0 --force -q

# 1. boxes → masks (MAL). The defaults: the packaged ImageNet EfficientNet-Lite0 on 48² crops, sized for a
#    CPU and a few hundred steps (MAL's own ViT-B recipe is in the README, for a GPU).
$WSIS mal-label "$D/boxes.json" -i "$D/images" -o "$OUT/mal.json" --run "$OUT/mal-run" \
  --epochs $((EPOCHS * 3)) --batch-size 16 -q

# 2. image-level tags → class attention maps → IRNet instances
$WSIS cam "$D/labels.json" -i "$D/images" -o "$OUT/cams.h5" --run "$OUT/cam-run" \
  --arch resnet18 --weights none --train-early --epochs $((EPOCHS * 3)) --batch-size 8 \
  --scales 1.0,0.5 -q
$WSIS irnet "$OUT/cams.h5" -i "$D/images" -o "$OUT/irnet.json" --run "$OUT/irnet-run" \
  --epochs "$EPOCHS" --batch-size 8 --crop 128 -q

# 3. no labels at all → Free Mask
$WSIS freemask "$D/images" -o "$OUT/freemask.json" --arch resnet18 --weights none --short-side 0 -q

# 4. refine each path's masks with the CRF, shard-style: two shards joined by merge (a SLURM array
#    does the sharding for you, see examples/slurm/)
for m in mal irnet freemask; do
  for i in 0 1; do
    $WSIS refine-crf "$OUT/$m.json" -i "$D/images" -o "$OUT/$m.crf.$i.json" --shard "$i/2" -q
  done
  $WSIS merge "$OUT/$m.crf.0.json" "$OUT/$m.crf.1.json" -o "$OUT/$m.crf.json" -q
done

# 5. score the pseudo-labels against the ground truth (freemask is class-agnostic)
for m in mal irnet; do
  echo "== $m pseudo-labels (refined)"
  $WSIS eval "$OUT/$m.crf.json" --gt "$D/gt.json"
done
echo "== freemask pseudo-labels (refined, class-agnostic)"
$WSIS eval "$OUT/freemask.crf.json" --gt "$D/gt.json" --class-agnostic

# 6. train a student on the MAL labels and on the ground truth (the upper bound); predict; evaluate
for labels in mal.crf gt; do
  src=$OUT/$labels.json
  [ "$labels" = gt ] && src=$D/gt.json
  $WSIS train-student "$src" -i "$D/images" -o "$OUT/student-$labels" --arch resnet18-fpn --weights none \
    --epochs $((EPOCHS * 2)) --batch-size 2 --min-size 128 --max-size 128 --rois-per-image 64 --workers 0 \
    --group-norm --fpn-channels 64 --box-head-dim 256 --mask-head-channels 64 --proposals 200 \
    --optimizer adamw --lr 1e-3 --warmup-iters 10 -q  # the demo's from-scratch recipe (see the README)
  $WSIS train-student "$D/gt.json" -i "$D/images" --checkpoint "$OUT/student-$labels/model.pt" \
    -o "$OUT/student-$labels.preds.json" --min-size 128 --max-size 128 -q
  echo "== student trained on $labels"
  $WSIS eval "$OUT/student-$labels.preds.json" --gt "$D/gt.json"
done

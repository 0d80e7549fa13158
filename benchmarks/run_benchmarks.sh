#!/usr/bin/env bash
# The runs behind BENCHMARKS.md, most needed first; each resumes where it stopped.
# About 4-5 hours on a 2-core machine.  Then: python benchmarks/benchmarks_md.py benchmarks/results/*
# --scope inner: only each block's inner conv is pruned (HRank's and CHIP's setting on ResNet-56,
# and what every suite here has run with); the criteria are compared at identical structure either way.
set -euo pipefail
ALL="ocnna ocnna-0.95 ocnna-relu mean-energy ocnna-rms l1 l2 fpgm taylor bn-scale lamp random hrank"
FT="ocnna ocnna-rms mean-energy l1 fpgm hrank random"
run() {  # folder, then the bench arguments
  local out=$1; shift
  echo "[$(date -u +%H:%M:%S)] $out"
  ocnna-fast bench "$@" --out "$out" --no-progress
}
bn() { run benchmarks/results/r$1-bn --arch resnet$1 --scope inner --k $2 --criteria $ALL --seeds 0 1 2 \
         --score-images 1000 --bn-images 1000; }
ft() { run benchmarks/results/r$1-ft --arch resnet$1 --scope inner --k 40 --criteria ${2:-$FT} --seeds ${3:-0} \
         --score-images 1000 --bn-images 1000 --finetune-epochs 1 --train-images 10000; }
# the closest finishers after fine-tuning, again at two more seeds (the seed orders the fine-tuning data)
TOP="ocnna-rms l1 fpgm"
bn 20 "40 20 60"
bn 32 40
bn 44 40
ft 56
bn 56 "40 20 60"
ft 20
ft 32
ft 44
ft 56 "$TOP" "0 1 2"
ft 20 "$TOP" "0 1 2"
ft 32 "$TOP" "0 1 2"
ft 44 "$TOP" "0 1 2"
echo "[$(date -u +%H:%M:%S)] all done"

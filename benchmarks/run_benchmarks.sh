#!/usr/bin/env bash
# The runs behind BENCHMARKS.md, in order; each resumes where it stopped.
# About 2-4 hours on a 2-core machine.  Then: python benchmarks/benchmarks_md.py benchmarks/results/*
set -euo pipefail
ALL="ocnna ocnna-0.95 ocnna-relu mean-energy ocnna-rms l1 l2 fpgm taylor bn-scale lamp random hrank"
FT="ocnna ocnna-rms mean-energy l1 fpgm hrank random"
run() {  # folder, then the bench arguments
  local out=$1; shift
  mkdir -p "$out"
  echo "ocnna-fast bench $* --out $out" > "$out/command.txt"
  ocnna-fast bench "$@" --out "$out" --no-progress
}
for arch in resnet20 resnet56; do
  run benchmarks/results/r${arch#resnet}-bn --arch $arch --k 40 20 60 --criteria $ALL --seeds 0 1 2 \
      --score-images 1000 --bn-images 1000
done
for arch in resnet20 resnet56; do
  run benchmarks/results/r${arch#resnet}-ft --arch $arch --k 40 --criteria $FT --seeds 0 \
      --score-images 1000 --bn-images 1000 --finetune-epochs 1 --train-images 10000
done

#!/usr/bin/env bash
# OCNNA vs L1 (and ocnna-rms) at identical structure on MobileNet v1 0.75/192 with ImageNet weights
# converted from the Coral TFLite file (kept outside the repository: ../shared/data or --data-dir).
# Scores and calibrates on the even half of the 1000-image ImageNet sample, evaluates on the odd half.
# The model's BatchNorm is folded into its convs: after surgery the removed channels' mean
# contributions go into the next layers' biases, then every conv's output mean and spread are
# re-estimated through BatchNorm put back and folded again (the "acc. after BN" column;
# --folded-correction variance: the suite was recorded before the least-squares refit was the default).
# About 30 min on 2 cores.
set -euo pipefail
OUT=${1:-benchmarks/results/mnv1-075}
mkdir -p "$OUT"
TFLITE=$(python -P -c "from ocnna_fast.data.places import find_data; print(find_data('mobilenet-imagenet-tflite-coral/mobilenet_v1_0.75_192_quant.tflite'))")
WEIGHTS="$OUT/mobilenet_v1_075_imagenet.safetensors"
[ -f "$WEIGHTS" ] || ocnna-fast convert-tflite "$TFLITE" --out "$WEIGHTS"
ARGS="--arch mobilenet_v1_075_imagenet --weights $WEIGHTS --dataset imagenet-sample --criteria ocnna l1 ocnna-rms
      --k 10 20 40 60 --seeds 0 --score-images 500 --bn-images 500 --batch-size 50 --latency-repeats 5
      --folded-correction variance"
ocnna-fast bench $ARGS --out "$OUT" --no-progress

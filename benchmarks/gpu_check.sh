#!/usr/bin/env bash
# One prepared run for a GPU machine: build, GPU tests, GPU benchmark, the
# prune job and a distillation epoch on the GPU.  Under 8 minutes on an H100.  Writes logs to $OUT when set.
#   bash benchmarks/gpu_check.sh            # full
#   QUICK=1 bash benchmarks/gpu_check.sh    # extrapolate the 50k-image runs
#   PROFILE=1 ...                           # add a kernel-time table of one scored batch
#   SECTIONS=2,3 TESTS="test_score.py" ...  # a part of the benchmark / of the tests
#   JOB=0 ...                               # without the job on the GPU (benchmarks/gpu_job.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ocnna-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== build"
python3 -m pip install --no-build-isolation --no-deps -q . 2>&1 | tail -5 | tee "$OUT/build.log"
(cd /tmp && python3 -c "import ocnna_fast, json; i = ocnna_fast.build_info(); print(json.dumps(i)); assert i['cuda_available'], i") \
  || { echo "CUDA core not usable"; exit 1; }
echo "== GPU tests ($(( $(date +%s) - start )) s)"
# run from elsewhere so the installed package (with its compiled modules) is imported;
# the CPU emulation of the kernels (about 2 minutes of CPU) is CI's job, not the GPU's
( cd tests && python3 -m pytest -q -x -rs -p no:cacheprovider \
    ${TESTS:-. --ignore=test_cuda_kernels_emulated.py} 2>&1 | tail -25 ) | tee "$OUT/tests.log"
echo "== GPU benchmark ($(( $(date +%s) - start )) s)"
python3 benchmarks/bench_gpu.py ${QUICK:+--quick} ${PROFILE:+--profile} ${SECTIONS:+--sections "$SECTIONS"} --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
if [ "${JOB:-1}" = 1 ]; then
  echo "== the job on the GPU ($(( $(date +%s) - start )) s)"
  python3 benchmarks/gpu_job.py --out "$OUT/job" 2>&1 | tee "$OUT/gpu_job.log"
fi
echo "== done in $(( $(date +%s) - start )) s"

# Session 20, device call 1: gpu_s19a.sh (float32 compile reports on the GPU image's CUDA 13.0 with chains (2, 2),
# then the float32 Hypothesis tests and session 17's unreached tests) plus compute-sanitizer racecheck and memcheck
# on the chained float32 (3xTF32) forward and backward defaults, one process per tool and head_dim (SANITIZE=0
# skips them). Nothing here is timed, so the parts share the machine.
# Run: bash .gpu/env.sh bash experiments/gpu_s20a.sh   ($OUT: the device tool's output folder)
W=$OUT/runs; mkdir -p $W
if [ "${SANITIZE:-1}" != 0 ]; then
  for d in 64 128; do
    timeout -s INT ${TEST_S:-540} compute-sanitizer --tool racecheck --racecheck-report all python \
      experiments/sanitize_tc.py --float32-only --head-dim $d > $W/racecheck-$d.log 2>&1 &
    timeout -s INT ${TEST_S:-540} compute-sanitizer --tool memcheck --report-api-errors no python \
      experiments/sanitize_tc.py --float32-only --head-dim $d > $W/memcheck-$d.log 2>&1 &
  done
fi
WORKERS=${WORKERS:-8} bash experiments/gpu_s19a.sh
wait
for f in $W/racecheck-*.log $W/memcheck-*.log; do echo "== $f"; grep -E "float32|ERROR SUMMARY|RACECHECK SUMMARY|rror" $f | head; done

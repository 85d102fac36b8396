# The checks session 20 left (not run yet): compute-sanitizer racecheck and memcheck on the chained float32
# (3xTF32) forward and backward defaults, one process per tool and head_dim, beside the GPU tests of
# experiments/gpu_s20_tests.txt (TESTS=file for another list; GPU profile, outputs poisoned, WORKERS processes,
# TEST_S seconds). Nothing here is timed, so the parts share the machine. (Session 20's one call, gpu_s20b.sh,
# ran the float32 compile tests on the GPU image: passed.)
# Run: bash .gpu/env.sh bash experiments/gpu_s20a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
W=$OUT/runs; mkdir -p $W; T=${TEST_S:-540}
if [ "${SANITIZE:-1}" != 0 ]; then
  for d in 64 128; do
    timeout -s INT $T compute-sanitizer --tool racecheck --racecheck-report all python \
      experiments/sanitize_tc.py --float32-only --head-dim $d > $W/racecheck-$d.log 2>&1 &
    timeout -s INT $T compute-sanitizer --tool memcheck --report-api-errors no python \
      experiments/sanitize_tc.py --float32-only --head-dim $d > $W/memcheck-$d.log 2>&1 &
  done
fi
grep -v '^#' ${TESTS:-experiments/gpu_s20_tests.txt} > /tmp/tests.txt
IFS=$'\n'
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT $T python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n ${WORKERS:-8} --tb=short -rf --junitxml=$OUT/junit.xml --durations=30 \
  $(cat /tmp/tests.txt) > $OUT/tests.log 2>&1 &
unset IFS
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
for f in $W/racecheck-*.log $W/memcheck-*.log; do echo "== $f"; grep -E "float32|ERROR SUMMARY|RACECHECK SUMMARY|rror" $f | head -5; done
echo "== tests"; grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20; grep -E "^E " $OUT/tests.log | head -30

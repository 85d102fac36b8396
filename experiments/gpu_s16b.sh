# Session 16, device call 2: the float32 (3xTF32) dK/dV kernel's second-level sums above head_dim 64, in dK and
# dV themselves in global memory (a store, then red.global.add; config.TF32_SUMS_KSTEPS), side by side:
# - forward+backward and backward, float32, N = 4096, head_dim 128, causal and not, against SDPA's EFFICIENT
#   backend: the new default, and the old one causal (OLD=folder with the previous commit's numba_flash and
#   experiments/atomic_dq.py), each process interleaving its kernels with SDPA in 3 rounds under one timing lock; errors
#   against float64 beside SDPA's (the target: dv's causal error was 2.4x SDPA's);
# - tests with the GPU profile, outputs poisoned, in the order of experiments/gpu_s16b_tests.txt: every float32
#   test of test_tc (oracle at odd sizes, now with 600 queries at head_dim 128: two flushes; the two-level test
#   at 64 and 128, bitwise repeatable; the compile checks with this image's CUDA 13.0), then the tests that
#   neither session 15's whole-suite run nor call 1 reached, then call 1's two failed compile tests (bounds);
# - compute-sanitizer racecheck and memcheck on the float32 defaults at 64 and 128 (sanitize_tc.py --float32-only).
# Run: OLD=.ab_old bash .gpu/env.sh bash experiments/gpu_s16b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s16b.lock; W=/tmp/s16b; mkdir -p $W
T=${TIME_S:-500}
A="--dtype float32 --shape 4,16,4096,128 --repeat 10 --interleave 3 --lock $L --default-only"
for c in no yes; do
  timeout -s INT $T python experiments/atomic_dq.py $A --causal $c --out $W/new-$c > $W/new-$c.log 2>&1 &
  if [ -n "$OLD" ] && [ $c = yes ]; then
    timeout -s INT $T python $OLD/experiments/atomic_dq.py $A --causal $c --out $W/old-$c > $W/old-$c.log 2>&1 &
  fi
done
(timeout -s INT 260 compute-sanitizer --tool racecheck --racecheck-report all python experiments/sanitize_tc.py \
   --float32-only > $W/racecheck.log 2>&1
 timeout -s INT 200 compute-sanitizer --tool memcheck --report-api-errors no python experiments/sanitize_tc.py \
   --float32-only > $W/memcheck.log 2>&1) &
IFS=$'\n'
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-520} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n ${WORKERS:-11} --tb=short -rf --junitxml=$OUT/junit.xml --durations=20 \
  $(grep -v '^#' experiments/gpu_s16b_tests.txt) > $OUT/tests.log 2>&1 &
unset IFS
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/s16b.tgz -C $W .
for f in $W/*-*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|ratio|Error|error" $f | cut -c1-250; done
for f in $W/racecheck.log $W/memcheck.log; do echo "== $f"; grep -E "float32|ERROR SUMMARY|RACECHECK SUMMARY|Error" $f | head; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -30

# Session 16, device call 3 (the last ~5 minutes of device time): call 2's global second-level sums ran the float32
# causal backward at head_dim 128 13 % slower (a store for the first flush, red.global.add after: more spills).
# Now dK and dV are zeroed in the prologue and every flush is a red.global.add (with CI's wheels: less spill than
# the one-level kernel). Side by side:
# - forward+backward and backward, float32, N = 4096, head_dim 128, against SDPA's EFFICIENT backend: the new
#   default causal and not, the old (one-level) one causal (OLD=folder with fef0c3d's numba_flash and
#   experiments/atomic_dq.py), 3 interleaved rounds each under one timing lock, errors against float64;
# - the float32 tests that reach the changed kernel, GPU profile, outputs poisoned: the two-level test at 128
#   (bitwise repeatable), the sm_90 compile check with this image's CUDA 13.0, the oracle at 600 x 513 tokens.
# Run: OLD=.ab_old bash .gpu/env.sh bash experiments/gpu_s16c.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/s16c.lock; W=$OUT/runs; mkdir -p $W
T=${TIME_S:-290}
A="--dtype float32 --shape 4,16,4096,128 --repeat 10 --interleave 3 --lock $L --default-only"
for c in yes no; do
  timeout -s INT $T python experiments/atomic_dq.py $A --causal $c --out $W/new-$c > $W/new-$c.log 2>&1 &
done
[ -n "$OLD" ] && timeout -s INT $T python $OLD/experiments/atomic_dq.py $A --causal yes --out $W/old-yes \
  > $W/old-yes.log 2>&1 &
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-290} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 6 --tb=short -rf --junitxml=$OUT/junit.xml \
  "tests/test_tc.py::test_float32_dkdv_two_level_sums_beat_one_float32_sum[128]" \
  tests/test_tc.py::test_float32_tensor_core_backward_compiles_to_tf32_mma_without_spills \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-True-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-False-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[16x16x1x16-True-shape2]" \
  > $OUT/tests.log 2>&1 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
for f in $W/*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|ratio|Error" $f | cut -c1-200; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | sort -u | cut -c1-150
tail -1 $OUT/tests.log; grep -E "^E " $OUT/tests.log | head -10

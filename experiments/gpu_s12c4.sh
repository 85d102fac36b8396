# Session 12, device call 4: forward+backward and backward at head_dim 128 with the new unmasked forward default
# (256, 64, 2, 32, reread) against SDPA flash, float16 and bfloat16, causal and not, interleaved with SDPA
# (atomic_dq.py --interleave 3), one process per dtype under one timing lock; then the tests call 3's time cut:
# the default-by-band tests, the remaining odd-size oracle tests of the defaults, bfloat16 at head_dim 128.
# Run: bash .gpu/env.sh bash experiments/gpu_s12c4.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/c4.lock; W=/tmp/c4; mkdir -p $W
for dt in float16 bfloat16; do
  timeout -s INT ${TIME_S:-330} python experiments/atomic_dq.py --shape 4,16,4096,128 --dtype $dt --causal both \
    --repeat 10 --interleave 3 --bwd-config 64,32,2,16 --lock $L --out $W/bwd128-$dt > $W/bwd128-$dt.log 2>&1 &
done
wait  # the tests after the timings: they would share the GPU with them
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/c4.tgz -C $W .
for dt in float16 bfloat16; do grep -E "causal=|numba_flash|sdpa|errors|Error|error" $W/bwd128-$dt.log | cut -c1-160; done
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-220} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 10 --tb=short -rf tests/test_tc.py \
  -k "by_band or (odd_sizes and default and True and not float32 and (shape3 or shape4)) or (bfloat16_kernels and shape2)" \
  > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head; grep -E "^E " $OUT/tests.log | head

# Session 12, device call 3: the head_dim-64 16-bit forward with one block of 8 warps, (256, 64, 2, 32), against
# its default (128, 64, 2, 32), float16 and bfloat16, causal and not, under one timing lock (untimed GPU work
# under the shared lock); then the tests of the new head_dim-128 unmasked default (256, 64, 2, 32, reread):
# the default-by-band tests, the odd-size oracle tests of the defaults, its compile test with this image's
# toolchain, and the launch-bound occupancy test, after the timings (GPU Hypothesis profile, outputs poisoned).
# Run: bash .gpu/env.sh bash experiments/gpu_s12c3.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/c3.lock; W=/tmp/c3; mkdir -p $W
for dt in float16 bfloat16; do
  timeout -s INT ${TIME_S:-300} python experiments/tc_sweep.py --dtype $dt --head-dims 64 --causal both \
    --configs 256,64,2,32 128,64,2,32 --lock $L --out $W/fwd64-$dt > $W/fwd64-$dt.log 2>&1 &
done
wait  # the tests after the timings: they would share the GPU with them
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-270} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 10 --tb=short -rf tests/test_tc.py \
  -k "by_band or follows_the_band or launch_bound or reread_q_frees or (odd_sizes and default and not float32)" > $OUT/tests.log 2>&1
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/c3.tgz -C $W .
for n in fwd64-float16 fwd64-bfloat16; do
  grep "^{" $W/$n.log | python -c "import sys, ast; [print(d['dtype'], d['causal'], d['config'], round(d['tflops'], 1), round(d['vs_flash'], 3), d['registers'], d['blocks_per_sm']) for d in map(ast.literal_eval, sys.stdin)]"
done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head; grep -E "^E " $OUT/tests.log | head

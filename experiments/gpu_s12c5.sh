# Session 12, device call 5 (after masking.NEG_INF became the one definition): the head_dim-128 forward defaults
# again, unmasked (256, 64, 2, 32, reread) and banded (128, 32, 2, 32, reread), float16 and bfloat16, against
# SDPA (a second measurement of call 2's ratios), then the tests calls 3 and 4 left out: the unmasked
# default-by-band test and bfloat16 at head_dim 128 unmasked, plus the portable-kernel default tests.
# Run: bash .gpu/env.sh bash experiments/gpu_s12c5.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/c5.lock; W=/tmp/c5; mkdir -p $W
for dt in float16 bfloat16; do
  timeout -s INT ${TIME_S:-240} python experiments/tc_sweep.py --dtype $dt --head-dims 128 --causal both \
    --configs 256,64,2,32,reread 128,32,2,32,reread --lock $L --out $W/fwd128-$dt > $W/fwd128-$dt.log 2>&1 &
done
wait  # the tests after the timings: they would share the GPU with them
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/c5.tgz -C $W .
for n in fwd128-float16 fwd128-bfloat16; do
  grep "^{" $W/$n.log | python -c "import sys, ast; [print(d['dtype'], d['causal'], d['config'], round(d['tflops'], 1), round(d['vs_flash'], 3), d['registers'], d['blocks_per_sm']) for d in map(ast.literal_eval, sys.stdin)]"
done
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-200} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 8 --tb=short -rf tests/test_tc.py \
  -k "(by_band and False-window0) or (bfloat16_kernels and default-False-shape2) or default_forward_is or default_backward_is" \
  > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -E "^E " $OUT/tests.log | head

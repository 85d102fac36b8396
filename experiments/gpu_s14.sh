# Session 14, its one device call (12 minutes of device time were left): session 13's head_dim-128 backward
# default, (128, 64, 2, 16, split_d), checked and measured on the GPU, everything side by side:
# - timings: backward and forward+backward against SDPA flash at head_dim 128, float16 and bfloat16, causal and
#   not (atomic_dq.py --default-only --interleave 3, one process each, one timing lock);
# - tests with the GPU profile, outputs poisoned: the split_d oracle tests at head_dim 128 (those at 64 and 96
#   passed in session 13's call 1), the new varlen default test, bfloat16 at head_dim 128 with the defaults;
# - compute-sanitizer racecheck and memcheck of the split_d kernel, racecheck of the 8-warp unmasked forward.
# The tests and sanitizers share the GPU with the timings (no device time for a second call): each timing's
# rounds rotate numba_flash and SDPA, so the load falls on both; the logs give each one's spread.
# Run: bash .gpu/env.sh bash experiments/gpu_s14.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s14.lock; W=/tmp/s14; mkdir -p $W
for run in ${RUNS:-float16:no bfloat16:no float16:yes bfloat16:yes}; do
  dt=${run%%:*}; c=${run##*:}
  timeout -s INT ${TIME_S:-460} python experiments/atomic_dq.py --shape 4,16,4096,128 --dtype $dt --causal $c \
    --default-only --repeat 10 --interleave 3 --lock $L --out $W/bwd128-$dt-$c > $W/bwd128-$dt-$c.log 2>&1 &
done
for tool in racecheck memcheck; do
  extra=$([ $tool = racecheck ] && echo "--racecheck-report all")
  timeout -s INT ${SAN_S:-450} compute-sanitizer --tool $tool $extra python experiments/sanitize_tc.py --split-only \
    > $W/sanitize-$tool-split.log 2>&1 &
done
timeout -s INT ${SAN_S:-450} compute-sanitizer --tool racecheck --racecheck-report all python experiments/sanitize_tc.py \
  --wide-only > $W/sanitize-racecheck-wide.log 2>&1 &
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-470} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 8 --tb=short -rf tests/test_tc.py \
  -k "(split_d_backward_matches and 128) or varlen_backward_default or (bfloat16_kernels and default and shape2)" \
  > $OUT/tests.log 2>&1 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/s14.tgz -C $W .
for f in $W/bwd*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|errors|Error|error" $f | cut -c1-170; done
for f in $W/sanitize-*.log; do echo "== $f"; tail -4 $f; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head
grep -E "^E " $OUT/tests.log | head -20

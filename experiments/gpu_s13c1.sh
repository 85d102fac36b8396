# Session 13, device call 1: the split_d dK/dV kernel (FlashAttention-2's warp layout) at head_dim 128, float16:
# backward and forward+backward of four split_d configs against the default backward and SDPA flash
# (atomic_dq.py --interleave 3, one process per config under one timing lock), and beside them its oracle tests.
# Run: bash .gpu/env.sh bash experiments/gpu_s13c1.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/c1.lock; W=/tmp/c1; mkdir -p $W
i=0
for cfg in ${CONFIGS:-128,64,2,16,split 128,64,2,16,reread,split 64,64,2,16,split 128,32,2,16,reread,split}; do
  i=$((i + 1))
  timeout -s INT ${TIME_S:-450} python experiments/atomic_dq.py --shape 4,16,4096,128 --dtype ${DTYPE:-float16} \
    --causal both --repeat 10 --interleave 3 --bwd-config $cfg --lock $L --out $W/bwd128-$i > $W/bwd128-$i.log 2>&1 &
done
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-420} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 7 --tb=short -rf tests/test_tc.py -k "split_d_backward_matches" > $OUT/tests.log 2>&1 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/c1.tgz -C $W .
for f in $W/bwd128-*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|errors|Error|error" $f | cut -c1-170; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head; grep -E "^E " $OUT/tests.log | head -20

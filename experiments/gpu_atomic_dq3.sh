# Session 8, device call 3: the atomic-dQ backward with its units' mma chains interleaved (timed alone),
# then test_tc's 16-bit tests (tensor-core kernels with query blocks in reverse order, atomic dQ).
# Run: bash .gpu/env.sh bash experiments/gpu_atomic_dq3.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
timeout -s INT 220 python experiments/atomic_dq.py --shape 4,32,4096,64 --bwd-config 64,32,2,16,1 --lock $LOCK \
  --out $OUT/d64 > $OUT/d64.log 2>&1 &
timeout -s INT 220 python experiments/atomic_dq.py --shape 4,16,4096,128 --bwd-config 128,32,2,16,1 --lock $LOCK \
  --out $OUT/d128 > $OUT/d128.log 2>&1 &
wait
grep -E "^\| (64|128) " $OUT/d64.log $OUT/d128.log
HYPOTHESIS_PROFILE=gpu timeout -s INT 330 python -m pytest -v -p no:cacheprovider -p no:randomly -n 15 --tb=short -rf \
  tests/test_tc.py -k "not compiles and not float32" > $OUT/tests_tc.log 2>&1
grep -E "passed|failed" $OUT/tests_tc.log | tail -3
grep -E "^FAILED|Error|assert" $OUT/tests_tc.log | head -30

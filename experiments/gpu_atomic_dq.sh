# Session 8, device call 1: the atomic-dQ backward (16-bit) against the two-kernel one and SDPA flash,
# head_dim 64 and 128 in two processes (compiles side by side, timings one at a time under a lock),
# then its agreement test against the deterministic backward (GPU profile, outputs poisoned).
# Run: bash .gpu/env.sh bash experiments/gpu_atomic_dq.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
timeout -s INT 330 python experiments/atomic_dq.py --shape 4,32,4096,64 --lock $LOCK --out $OUT/d64 > $OUT/d64.log 2>&1 &
timeout -s INT 330 python experiments/atomic_dq.py --shape 4,16,4096,128 --lock $LOCK --out $OUT/d128 > $OUT/d128.log 2>&1 &
HYPOTHESIS_PROFILE=gpu timeout -s INT 330 python -m pytest -v -p no:cacheprovider -p no:randomly -n 4 --tb=short -rf \
  tests/test_tc.py -k "atomic and not compiles" > $OUT/tests.log 2>&1 &
wait
tail -30 $OUT/d64.log; tail -30 $OUT/d128.log
grep -E "passed|failed" $OUT/tests.log | tail -3
grep -E "^FAILED|Error|assert" $OUT/tests.log | head -30

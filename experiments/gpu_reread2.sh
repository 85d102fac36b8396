# Session 9, device call 2: candidates for the head_dim-128 forward with Q re-read (three processes,
# compiles side by side, timings in turns under a lock), then the tensor-core tests (test_tc but its compile tests, which CI runs, with the
# new default and reread_q configs, and test_torch) with the GPU Hypothesis profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_reread2.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
mkdir -p $OUT/sweep
for c in 128,32,2,32,reread 128,16,2,32,reread 256,32,2,32,reread; do
  timeout -s INT 240 python experiments/tc_sweep.py --lock $LOCK --head-dims 128 --out $OUT/tmp_$c \
    --configs $c > $OUT/sweep/$c.log 2>&1 &
done
wait
for c in 128,32,2,32,reread 128,16,2,32,reread 256,32,2,32,reread; do grep "^| 128" $OUT/sweep/$c.log; done
rm -rf $OUT/tmp_*
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 320 python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py tests/test_torch.py -k "not compiles" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E " $OUT/tests.log | head -20

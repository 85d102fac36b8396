# Session 8, device call 6: after the review's change to api._backward_plan (one dK/dV launch for both
# kernels' kinds, the dQ kernel built only when used, one placeholder-array helper): the backward tests of
# test_tc (default, atomic, float32) and the adapter's; GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_review8.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 420 python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py tests/test_torch.py \
  -k "not compiles and (atomic or default_backward or agree or (odd_sizes and default) or test_torch)" > $OUT/review.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/review.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/review.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/review.log | sort -u
grep -E "^E " $OUT/review.log | head -20

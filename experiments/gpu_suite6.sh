# Device call 6 (session 6): the suites that reach float32's new default forward (3xTF32) through
# config=None: the adapter's tests and the Hypothesis suites, GPU profile, outputs poisoned. Call 6:
# 137 passed, 1 failed (its report lost to the time limit); call 7 reran with -x to name it.
set -x
export PYTHONUNBUFFERED=1
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 400 python -m pytest -q -p no:cacheprovider -n 14 -x -rfs \
  tests/test_torch.py tests/test_kernels.py tests/test_features.py tests/test_api.py > $OUT/tests.log 2>&1
tail -15 $OUT/tests.log

# Session 8, device call 4: the Hypothesis suites (kernels, features: they now also draw the atomic-dQ
# backward config) and the API suite, after the query blocks' reverse order; GPU Hypothesis profile,
# outputs poisoned; verbose, so each result is printed as it lands.
# Run: bash .gpu/env.sh bash experiments/gpu_suites8.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${SUITE_S:-540} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf ${SUITES:-tests/test_kernels.py tests/test_features.py tests/test_api.py} \
  > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/suites.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u | sed 's/FAILED //' > $OUT/failed.txt
cat $OUT/failed.txt
grep -E "^E " $OUT/suites.log | head -30

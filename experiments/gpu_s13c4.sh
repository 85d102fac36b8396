# Session 13, device call 4: compute-sanitizer racecheck and memcheck of the split_d dK/dV kernel (the head_dim-128
# backward default) and of session 12's unmasked head_dim-128 forward default, beside the tensor-core, kernel and
# feature suites with the GPU Hypothesis profile (outputs poisoned).
# Run: bash .gpu/env.sh bash experiments/gpu_s13c4.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
for tool in racecheck memcheck; do
  for what in split wide; do
    extra=$([ $tool = racecheck ] && echo "--racecheck-report all")
    timeout -s INT ${SAN_S:-480} compute-sanitizer --tool $tool $extra python experiments/sanitize_tc.py --$what-only \
      > $OUT/sanitize-$tool-$what.log 2>&1 &
  done
done
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${SUITE_S:-540} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n ${WORKERS:-11} --tb=short -rf -k "not compiles" ${SUITES:-tests/test_tc.py tests/test_kernels.py tests/test_features.py} \
  > $OUT/suites.log 2>&1
wait
for f in $OUT/sanitize-*.log; do echo "== $f"; tail -4 $f; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/suites.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u | sed 's/FAILED //' > $OUT/failed.txt
cat $OUT/failed.txt
grep -E "^E " $OUT/suites.log | head -30

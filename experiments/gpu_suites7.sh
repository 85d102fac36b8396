# Session 7, device call 4: the suites that reach config=None's defaults, now with float32 on the 3xTF32
# kernels in both passes (and the 16-bit backward after its byte-addressing rewrite): adapter, Hypothesis
# kernels/features suites, API; GPU Hypothesis profile, outputs poisoned; verbose, so each result is
# printed as it lands, and the failures' reports are rerun one by one at the end.
# Run: bash .gpu/env.sh bash experiments/gpu_suites7.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${SUITE_S:-480} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_torch.py tests/test_kernels.py tests/test_features.py tests/test_api.py \
  > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | sort | uniq -c | awk '{print $2}' | sort | uniq -c
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u | sed 's/FAILED //' > $OUT/failed.txt
cat $OUT/failed.txt
if [ -s $OUT/failed.txt ]; then
  HYPOTHESIS_PROFILE=gpu timeout -s INT 90 python -m pytest -p no:cacheprovider -p no:randomly --tb=long -x \
    $(head -2 $OUT/failed.txt) > $OUT/rerun.log 2>&1
  grep -E "^E |Falsifying|assert|Error" $OUT/rerun.log | head -40
fi

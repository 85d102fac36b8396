# Device call (session 7): which test fails with float32's 3xTF32 forward as config=None's default.
cp tmp_dev/api_forced.py numba_flash/api.py
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 330 python -m pytest -v -p no:cacheprovider -p no:randomly -n 14 --tb=short -rf \
  tests/test_torch.py tests/test_kernels.py tests/test_features.py tests/test_api.py > $OUT/suites_v.log 2>&1
grep -E "FAILED|PASSED|ERROR" $OUT/suites_v.log | grep -c PASSED
grep -oE "FAILED tests/[^ ]+" $OUT/suites_v.log | sort -u | sed 's/FAILED //' > $OUT/failed.txt
cat $OUT/failed.txt
if [ -s $OUT/failed.txt ]; then
  HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 200 python -m pytest -p no:cacheprovider -p no:randomly --tb=long -x $(head -3 $OUT/failed.txt) > $OUT/rerun.log 2>&1
  tail -120 $OUT/rerun.log
fi

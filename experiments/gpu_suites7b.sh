# Session 7, device call 5: what call 4 (gpu_suites7.sh) did not reach in its time: the Hypothesis suites'
# float32 tests (config=None: the 3xTF32 kernels) and features/API suites, and test_tc's 16-bit oracle tests
# (the 16-bit backward after its byte-addressing rewrite). GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_suites7b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 530 python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_kernels.py tests/test_features.py tests/test_api.py tests/test_tc.py \
  -k "(float32 and not compiles) or test_features or test_api or match_oracle_at_odd or default_backward or bfloat16_kernels" \
  --deselect "tests/test_kernels.py::test_odd_shapes_forward_backward" > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u
grep -E "^E  " $OUT/suites.log | head -20

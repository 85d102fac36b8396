# Session 15, device call 3 (the last 8 minutes of device time): the tests that failed in call 2, after their
# fixes, and the float32 tests that reach this session's last kernel change (float32 dK/dV: dV's products before
# dK's at head_dim 128 too), with the GPU profile, outputs poisoned:
# - test_exp_tools' converters (torch tensors on the GPU), test_exp_features' smoke run (no time budget),
#   test_plan's tuning-cache test (tensor-core configs on the GPU);
# - the compile tests of the 16-bit forward and the float32 backward (their bounds for this image's CUDA 13.0);
# - the float32 oracle tests at head_dim 128 and 64, the two-level-sum test, the portable-agreement test.
# Run: bash .gpu/env.sh bash experiments/gpu_s15c.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-380} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 12 --tb=short -rf --junitxml=$OUT/junit.xml \
  tests/test_exp_tools.py::test_experiment_converters_round_trip_float16_and_bfloat16_bits \
  tests/test_exp_features.py tests/test_plan.py::test_a_changed_tuning_cache_is_seen_by_cached_calls \
  tests/test_tc.py::test_tensor_core_forward_compiles_to_mma_without_spills \
  tests/test_tc.py::test_float32_tensor_core_backward_compiles_to_tf32_mma_without_spills \
  tests/test_tc.py::test_float32_dkdv_two_level_sums_beat_one_float32_sum \
  tests/test_tc.py::test_float32_tensor_core_kernels_agree_with_the_portable_ones \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-False-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-True-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[16x16x1x16-False-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[16x16x1x16-True-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[128x16x2x32-True-shape2]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-True-shape1]" \
  "tests/test_tc.py::test_float32_tensor_core_kernels_match_oracle_at_odd_sizes[default-False-shape0]" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -20

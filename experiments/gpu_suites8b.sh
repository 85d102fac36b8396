# Session 8, device call 5: call 4's failures again (a division by zero in the dK/dV factory's atomic-dQ
# constants at float32 head_dim 8, fixed), then the adapter suite, test_tc's float32 tests (3xTF32 forward
# and dQ kernels with reversed block order) and the tuner's GPU tests; GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_suites8b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 540 python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_api.py::test_no_n_by_n_buffer_is_allocated \
  tests/test_api.py::test_varlen_backward_checks_lse_and_keeps_inputs tests/test_features.py::test_mqa_single_kv_head \
  "tests/test_kernels.py::test_every_head_dim_runs" tests/test_kernels.py::test_odd_shapes_forward_backward \
  tests/test_torch.py tests/test_exp_tune.py tests/test_tc.py -k "not compiles and (not test_tc or float32)" \
  > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/suites.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u
grep -E "^E " $OUT/suites.log | head -30

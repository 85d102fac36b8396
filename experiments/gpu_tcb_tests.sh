# Device call 1 of 2: tensor-core forward/backward tests (float16, bfloat16), adapter tests, Hypothesis suites.
set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 300 python -m pytest -q -p no:cacheprovider -n 14 -rf tests/test_tc.py tests/test_torch.py tests/test_ptx.py tests/test_launch.py -k "not compiles" > $OUT/tests.log 2>&1; tail -15 $OUT/tests.log
timeout -s INT 240 python -m pytest -q -p no:cacheprovider -n 15 -rf tests/test_kernels.py tests/test_features.py -k "matches_oracle or odd_shapes or varlen or feature or mask" > $OUT/hypothesis.log 2>&1; tail -15 $OUT/hypothesis.log

# One device call: tensor-core tests, Hypothesis suites (GPU profile), config sweep, host profile.
set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 170 python -m pytest -q -p no:cacheprovider -n 4 tests/test_ptx.py tests/test_tc.py tests/test_launch.py 2>&1 | tail -15
timeout -s INT 200 python -m pytest -q -p no:cacheprovider -n 15 tests/test_kernels.py tests/test_features.py -k "matches_oracle or odd_shapes or varlen or feature" 2>&1 | tail -15
unset NUMBA_FLASH_POISON
timeout -s INT 120 python experiments/tc_sweep.py --out $OUT/tc_sweep 2>&1 | tail -32
timeout -s INT 40 python experiments/host_profile.py > $OUT/host_profile.txt 2>&1; head -c 2500 $OUT/host_profile.txt

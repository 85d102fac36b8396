set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 200 python -m pytest -q -p no:cacheprovider -n 8 -rf tests/test_tc.py tests/test_torch.py -k "not compiles" 2>&1 | tail -12
timeout -s INT 150 python -m pytest -q -p no:cacheprovider -n 15 tests/test_kernels.py -k "forward_matches_oracle or odd_shapes" 2>&1 | tail -4

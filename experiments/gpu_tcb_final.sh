# Device call 3: where the adapter's host time goes; the adapter and bfloat16 tests again, verbose.
set -x
timeout -s INT 60 python experiments/host_profile.py > $OUT/host_profile.txt 2>&1; head -4 $OUT/host_profile.txt; grep -A1 "adapter" $OUT/host_profile.txt | head -12
export NUMBA_FLASH_POISON=1
timeout -s INT 380 python -m pytest -v -p no:cacheprovider -n 15 -rf tests/test_torch.py tests/test_tc.py -k "torch or bfloat16 or default_backward" > $OUT/tests.log 2>&1; grep -c PASSED $OUT/tests.log; grep -E "FAILED|ERROR" $OUT/tests.log | head; tail -3 $OUT/tests.log

# Device call after the tidy commit: the adapter (its tensor-core readiness check now reuses the API's),
# bfloat16 tests, and the bench's bfloat16 inputs (one rounding function, reference.bfloat16_bits).
set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 330 python -m pytest -v -p no:cacheprovider -n 15 -rf tests/test_torch.py tests/test_tc.py -k "bfloat16 or non_contiguous or stream or default_backward or odd_sizes" > $OUT/tests.log 2>&1; grep -c PASSED $OUT/tests.log; grep -E "FAILED|ERROR" $OUT/tests.log | head; tail -2 $OUT/tests.log
unset NUMBA_FLASH_POISON
timeout -s INT 150 python experiments/bench_speed.py --shape 2,8,1024,64 --dtype bfloat16 --impl numba_flash --impl torch_flash --pass forward --causal no --no-plot --no-host-overhead --out $OUT/bench > $OUT/bench.log 2>&1; tail -12 $OUT/bench.log

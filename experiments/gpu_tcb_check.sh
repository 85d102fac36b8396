# One device call: the tensor-core backward's tests, then forward+backward speed against SDPA.
set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 300 python -m pytest -q -p no:cacheprovider -n 10 -rf tests/test_tc.py -k "not compiles" > $OUT/tests.log 2>&1; tail -15 $OUT/tests.log
unset NUMBA_FLASH_POISON
timeout -s INT 200 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 --impl numba_flash --impl torch_flash --pass forward_backward --causal both --no-plot --no-host-overhead --out $OUT/bench > $OUT/bench.log 2>&1; tail -30 $OUT/bench.log

# One device call: tensor-core tests, Hypothesis suites (GPU profile), speed against SDPA, adapter overhead.
set -x
export NUMBA_FLASH_POISON=1
timeout -s INT 150 python -m pytest -q -p no:cacheprovider -n 6 tests/test_ptx.py tests/test_tc.py tests/test_launch.py -k "not compiles" 2>&1 | tail -6
timeout -s INT 230 python -m pytest -q -p no:cacheprovider -n 15 tests/test_kernels.py tests/test_features.py -k "matches_oracle or odd_shapes or varlen or feature or mask" 2>&1 | tail -8
unset NUMBA_FLASH_POISON
timeout -s INT 130 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 --impl numba_flash --impl torch_flash --impl torch_cudnn --causal both --no-plot --out $OUT/bench 2>&1 | tail -42
timeout -s INT 45 python experiments/torch_overhead.py --out $OUT/overhead 2>&1 | tail -9

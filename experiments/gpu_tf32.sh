# Device call (session 6): the float32 3xTF32 tensor-core forward. First the sweep against SDPA
# EFFICIENT (quiet machine: timings before tests), D = 64 and 128, causal and not, with the error
# against float64; then the tests that exercise it, with the GPU Hypothesis profile and poisoned outputs.
set -x
export PYTHONUNBUFFERED=1
timeout -s INT 390 python experiments/in_one_process.py \
  "fp32_tensor_cores --shape 4,32,4096,64 --config 64,64,2,16 --config 64,32,2,16 --config 128,32,2,32 --out $OUT/fp32_d64" \
  "fp32_tensor_cores --shape 4,16,4096,128 --config 64,32,2,16 --config 64,64,2,16 --out $OUT/fp32_d128" > $OUT/fp32.log 2>&1
tail -45 $OUT/fp32.log
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 170 python -m pytest -q -p no:cacheprovider -n 12 -rfs \
  tests/test_tc.py tests/test_exp_tune.py -k "float32 or errors or mask or pick or resolve" > $OUT/tests.log 2>&1
tail -25 $OUT/tests.log

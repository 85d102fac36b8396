# Device calls (session 6): the float32 3xTF32 tensor-core forward. First the sweep against SDPA
# EFFICIENT (quiet machine: timings before tests), D = 64 and 128, causal and not, with the error
# against float64; then the tests that exercise it, with the GPU Hypothesis profile and poisoned outputs.
# (Call 1 ran the first version: out error 16x SDPA-efficient's, from accumulating P V in the mma
# accumulator; call 2 this one.)
set -x
export PYTHONUNBUFFERED=1
timeout -s INT 400 python experiments/in_one_process.py \
  "fp32_tensor_cores --shape 4,32,4096,64 --config 128,16,2,32 --config 128,32,2,32 --config 64,64,2,16 --config 64,32,2,16 --out $OUT/fp32_d64" \
  "fp32_tensor_cores --shape 4,16,4096,128 --config 64,32,2,16 --config 64,16,2,16 --out $OUT/fp32_d128" > $OUT/fp32.log 2>&1
grep -v "^  File\|^    " $OUT/fp32.log | tail -42
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 150 python -m pytest -q -p no:cacheprovider -n 12 -rfs \
  tests/test_tc.py -k "float32" > $OUT/tests.log 2>&1
tail -8 $OUT/tests.log

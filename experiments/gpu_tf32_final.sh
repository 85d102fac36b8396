# Device calls 3 and 4 (session 6): the float32 forward's defaults against SDPA EFFICIENT at D = 64 and
# 128, causal and not (each --config equals the default, so nothing extra compiles), then the tests.
# Call 3 ran the tensor-core, tuner and runner tests (93 passed; the tf32 compile test then failed on
# an 8-byte stack frame); call 4 (S also summed per k-step in float32) the float32 tests.
set -x
export PYTHONUNBUFFERED=1
timeout -s INT 270 python experiments/in_one_process.py \
  "fp32_tensor_cores --shape 4,32,4096,64 --config 128,16,2,32 --out $OUT/fp32_d64" \
  "fp32_tensor_cores --shape 4,16,4096,128 --config 64,32,2,16 --out $OUT/fp32_d128" > $OUT/fp32.log 2>&1
grep -v "^  File\|^    " $OUT/fp32.log | grep -v "^|\|^wrote\|^/root" | tail -36
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 240 python -m pytest -q -p no:cacheprovider -n 14 -rfs \
  tests/test_tc.py -k "float32 or errors or mask" > $OUT/tests.log 2>&1
tail -12 $OUT/tests.log

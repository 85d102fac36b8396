# Session 7, device call 6: the test fixed after call 5 (dropout lse, one config for both calls), the
# float32 agreement test, the tuner's GPU tests of float32's new default; then float16 forward+backward vs SDPA
# flash at the shapes, to check the 16-bit backward after its byte-addressing rewrite.
# Run: bash .gpu/env.sh bash experiments/gpu_final7.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 200 python -m pytest -v -p no:cacheprovider -p no:randomly \
  -n 8 --tb=short -rf tests/test_features.py::test_dropout_lse_is_that_of_the_undropped_probabilities \
  tests/test_tc.py::test_float32_tensor_core_kernels_agree_with_the_portable_ones tests/test_exp_tune.py \
  -k "dropout_lse or agree_with_the_portable or resolve_kind or tuned_tc_config" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E  " $OUT/tests.log | head -20
timeout -s INT 260 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 \
  --impl numba_flash --impl torch_flash --pass forward_backward --causal no --no-plot --no-host-overhead \
  --repeat 10 --out $OUT/bench_fp16 > $OUT/bench_fp16.log 2>&1
tail -12 $OUT/bench_fp16.log

# Session 9, device call 4: bfloat16 at head_dim 128 against SDPA (call 3's sweep ran out of its time
# budget there), then the tests the new head_dim-128 default and reread_q touch: the Hypothesis kernel
# suite (draws the default and TensorCoreConfig(64, 32, 2, 16, reread_q=True)), test_tc's bfloat16,
# atomic, agreement and default tests, and the PyTorch adapter's; GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_reread4.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 150 python experiments/bench_speed.py --shape 4,16,4096,128 --dtype bfloat16 --impl numba_flash \
  --impl torch_flash --impl torch_cudnn --causal both --no-plot --no-host-overhead --out $OUT/bench_bf16 \
  > $OUT/bench_bf16.log 2>&1
grep "^| forward" $OUT/bench_bf16/bench_speed.md | head -4
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 400 python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_kernels.py tests/test_tc.py tests/test_torch.py \
  -k "test_kernels or (test_tc and not compiles and (bfloat16 or atomic or agree or default_)) or test_torch" \
  > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E " $OUT/tests.log | head -20

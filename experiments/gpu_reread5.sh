# Session 9, device call 5: bfloat16 at head_dim 128 against SDPA (call 4's 150 s limit cut it during the
# compiles), then what call 4 did not reach: test_tc's bfloat16, atomic-agreement and default-path tests and
# the PyTorch adapter's (test_torch); GPU profile, outputs poisoned.
# Run: bash .gpu/env.sh bash experiments/gpu_reread5.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 300 python experiments/bench_speed.py --shape 4,16,4096,128 --dtype bfloat16 --impl numba_flash \
  --impl torch_flash --impl torch_cudnn --causal both --no-plot --no-host-overhead --out $OUT/bench_bf16 \
  > $OUT/bench_bf16.log 2>&1
grep "^| forward" $OUT/bench_bf16/bench_speed.md | head -4
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT $((580 - SECONDS)) python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 12 --tb=short -rf tests/test_tc.py tests/test_torch.py \
  -k "test_torch or (not compiles and (bfloat16 or atomic_dq_agrees or agree_with or default_forward or default_backward))" \
  > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E " $OUT/tests.log | head -20

# Session 10, device call 3: the speed issue's table at head_dim 64 after the 16-bit backward default
# changed (bench_speed.py: float16 and bfloat16, forward and forward+backward, causal and not, SDPA
# flash and cuDNN, one process); then the float32 and b3 odd-size oracle tests (GPU Hypothesis
# profile, poisoned outputs) that call 2's time limit cut.
# Run: bash .gpu/env.sh bash experiments/gpu_blocks3.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 320 python experiments/bench_speed.py --shape 4,32,4096,64 --dtype float16 --dtype bfloat16 \
  --impl numba_flash --impl torch_flash --impl torch_cudnn --causal both --no-plot --no-host-overhead \
  --out $OUT/bench > $OUT/bench.log 2>&1
grep "^| forward" $OUT/bench/bench_speed.md | head -8
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-240} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py -k "(float32 and odd_sizes) or b3" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E " $OUT/tests.log | head -20

# Session 10, device call 2: the new defaults (16-bit backward at head_dim <= 64: dQ kernel re-reading
# Q and dO, compiled for 3 blocks per SM; float32 forward above head_dim 64: (64, 16, 2, 16, b3)).
# Timed first, one at a time under a lock: the 16-bit backward and forward+backward against SDPA flash
# (atomic_dq.py, float16 and bfloat16, head_dim 64, causal and not, the old default beside), float32 at
# head_dim 128 against SDPA efficient (fp32_tensor_cores.py, causal and not, errors vs float64, the old
# forward default beside). Then test_tc's GPU tests (odd sizes incl. the b3 config, float32, defaults)
# with the Hypothesis GPU profile and poisoned outputs.
# Run: bash .gpu/env.sh bash experiments/gpu_blocks2.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
T=${T:-300}
timeout -s INT $T python experiments/atomic_dq.py --lock $LOCK --shape 4,32,4096,64 --dtype float16 \
  --dtype bfloat16 --bwd-config 64,64,2,16 --out $OUT/bwd64 > $OUT/bwd64.log 2>&1 &
timeout -s INT $T python experiments/fp32_tensor_cores.py --lock $LOCK --shape 4,16,4096,128 --causal both \
  --config 64,32,2,16 --bwd-config 64,32,2,16 --out $OUT/fp32 > $OUT/fp32.log 2>&1 &
wait
grep -E "numba_flash|sdpa|B=|errors" $OUT/bwd64.log | cut -c1-160
grep -E "numba_flash|sdpa|B=|error" $OUT/fp32.log | cut -c1-200
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-270} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py -k "not compiles" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u
grep -E "^E " $OUT/tests.log | head -20

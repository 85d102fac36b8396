# Session 7, device call 3: float32 forward+backward vs SDPA EFFICIENT at head_dim 128 (defaults; errors vs
# float64), then every float32 tensor-core test of test_tc (GPU Hypothesis profile, outputs poisoned).
# Run: bash .gpu/env.sh bash experiments/gpu_tf32_bwd2.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 230 python experiments/fp32_tensor_cores.py --shape 4,16,4096,128 --config 64,32,2,16 \
  --bwd-config 64,16,2,16 --out $OUT/fp32_d128 > $OUT/fp32_d128.log 2>&1
tail -12 $OUT/fp32_d128.log
HYPOTHESIS_PROFILE=gpu timeout -s INT 340 python -m pytest -v -p no:cacheprovider -p no:randomly -n 15 --tb=short -rf \
  tests/test_tc.py -k "float32 and not compiles" > $OUT/tests_tc_float32.log 2>&1
grep -E "passed|failed" $OUT/tests_tc_float32.log | tail -3
grep -E "^FAILED|Error|assert" $OUT/tests_tc_float32.log | head -20

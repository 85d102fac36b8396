# Session 7, device call 1: the 3xTF32 backward. float32 forward+backward vs SDPA EFFICIENT at head_dim 64
# (defaults, one other backward config; errors vs float64), then the float32 tensor-core tests of test_tc.
# Run: bash .gpu/env.sh bash experiments/gpu_tf32_bwd.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 330 python experiments/fp32_tensor_cores.py --shape 4,32,4096,64 --config 128,16,2,32 \
  --bwd-config 64,16,2,16 --out $OUT/fp32_d64 > $OUT/fp32_d64.log 2>&1
tail -30 $OUT/fp32_d64.log
HYPOTHESIS_PROFILE=gpu timeout -s INT 200 python -m pytest -v -p no:cacheprovider -p no:randomly -n 14 --tb=short -rf \
  tests/test_tc.py -k "float32 and not compiles" > $OUT/tests_tc_float32.log 2>&1
grep -E "passed|failed" $OUT/tests_tc_float32.log | tail -3
grep -E "^FAILED|Error|assert" $OUT/tests_tc_float32.log | head -20

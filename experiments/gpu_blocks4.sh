# Session 10, device call 4: float32 at head_dim 128 against SDPA efficient with the new forward default
# (64, 16, 2, 16, b3) and the old one, (64, 32, 2, 16), beside it (fp32_tensor_cores.py, causal and not,
# errors vs float64); then the Hypothesis kernel and feature suites, which take the defaults with
# config=None (GPU profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_blocks4.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 300 python experiments/fp32_tensor_cores.py --shape 4,16,4096,128 --causal both \
  --config 64,32,2,16 --bwd-config 64,16,2,16 --out $OUT/fp32 > $OUT/fp32.log 2>&1
grep -E "numba_flash|sdpa|B=|error" $OUT/fp32.log | cut -c1-200
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${SUITE_S:-260} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_kernels.py tests/test_features.py > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/suites.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u
grep -E "^E " $OUT/suites.log | head -20

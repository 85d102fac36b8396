# Session 10, device call 5: bfloat16 at head_dim 64, the new backward default against the old one and
# SDPA flash (atomic_dq.py; call 2's bfloat16 was cut by its time limit), then the API and PyTorch adapter
# suites, which take the new defaults with config=None (GPU Hypothesis profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_blocks5.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 250 python experiments/atomic_dq.py --shape 4,32,4096,64 --dtype bfloat16 --bwd-config 64,64,2,16 \
  --out $OUT/bwd64_bf16 > $OUT/bwd64_bf16.log 2>&1
grep -E "numba_flash|sdpa|B=|errors" $OUT/bwd64_bf16.log | cut -c1-160
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${SUITE_S:-250} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_api.py tests/test_torch.py > $OUT/suites.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/suites.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/suites.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/suites.log | sort -u
grep -E "^E " $OUT/suites.log | head -20

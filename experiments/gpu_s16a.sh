# Session 16, device call 1: the rest of the whole-suite GPU run of session 15 (call 2 there was cut at 540 s with
# 202 tests not reached), with the GPU Hypothesis profile, outputs poisoned:
# - every test listed in experiments/gpu_s16a_tests.txt: the 202 unreached ones but the 24 float32 tensor-core
#   tests (they reach this session's float32 dK/dV change and run in a later call), plus the 16-bit forward
#   compile test whose CUDA 13.0 bound (40 stack / 48 spill) was not yet seen passing;
# - beside them, experiments/atomic_dq.py after session 15's review refactor, float16 and float32 at a small
#   shape (a smoke run of the script path on the GPU, not a timing).
# Run: bash .gpu/env.sh bash experiments/gpu_s16a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch, numpy; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)" >> $OUT/gpu.txt 2>&1
timeout -s INT ${SMOKE_S:-500} python experiments/atomic_dq.py --dtype float16 --dtype float32 --shape 1,2,512,64 \
  --causal yes --default-only --repeat 2 --out $OUT/atomic_dq_smoke > $OUT/atomic_dq_smoke.log 2>&1 &
IFS=$'\n'
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-530} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n ${WORKERS:-14} --tb=short -rf --junitxml=$OUT/junit.xml --durations=30 \
  $(grep -v '^#' experiments/gpu_s16a_tests.txt) > $OUT/tests.log 2>&1
unset IFS
wait
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -30
echo "== atomic_dq smoke"; tail -15 $OUT/atomic_dq_smoke.log | cut -c1-250

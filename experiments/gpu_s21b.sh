# Session 21, not run yet: compute-sanitizer racecheck and memcheck on the float32 backward with atomic dQ and on
# the float32 defaults (session 20's, not run: the causal forward now starts longest first), one process per tool
# and head_dim, beside the GPU tests of experiments/gpu_s21_tests.txt (the float32 atomic-dQ tests, then session
# 20's 29; GPU profile, outputs poisoned, WORKERS processes, TEST_S seconds). Nothing here is timed.
# Run: bash .gpu/env.sh bash experiments/gpu_s21b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
. experiments/gpu_parts.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
W=$OUT/runs; mkdir -p $W; T=${TEST_S:-540}
sanitize_float32 $T $W --atomic
[ "${SANITIZE_DEFAULTS:-1}" != 0 ] && sanitize_float32 $T $W
# every compile test's reports, for the GPU image's bounds
export NUMBA_FLASH_COMPILE_REPORTS=$OUT/compile_reports.jsonl
gpu_tests ${TESTS:-experiments/gpu_s21_tests.txt} $T ${WORKERS:-6}
wait
cat $OUT/gpu.txt
report_sanitizer $W
report_tests

# Session 22: one device call for the float32 atomic dQ (no machine was lent in session 21, and starts are scarce):
# first gpu_s21a.sh's timings (TIME_S seconds at most, nothing else on the GPU; HEAD_DIMS=128 for a short call),
# then its GPU tests (the float32_atomic_dq ids of gpu_s21_tests.txt) beside compute-sanitizer on its backward
# (TEST_S seconds).
# Run: bash .gpu/env.sh bash experiments/gpu_s22a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
TIME_S=${TIME_S:-300} bash experiments/gpu_s21a.sh
. experiments/gpu_parts.sh
T=${TEST_S:-200}; W=$OUT/runs; mkdir -p $W
sanitize_float32 $T $W --atomic
export NUMBA_FLASH_COMPILE_REPORTS=$OUT/compile_reports.jsonl
gpu_tests <(grep float32_atomic_dq experiments/gpu_s21_tests.txt) $T ${WORKERS:-4}
wait
report_sanitizer $W
report_tests

# The checks session 20 left (not run yet): compute-sanitizer racecheck and memcheck on the chained float32
# (3xTF32) forward and backward defaults, one process per tool and head_dim, beside the GPU tests of
# experiments/gpu_s20_tests.txt (TESTS=file for another list; GPU profile, outputs poisoned, WORKERS processes,
# TEST_S seconds). Nothing here is timed, so the parts share the machine. (Session 20's one call, gpu_s20b.sh,
# ran the float32 compile tests on the GPU image: passed.)
# Run: bash .gpu/env.sh bash experiments/gpu_s20a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
. experiments/gpu_parts.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
W=$OUT/runs; mkdir -p $W; T=${TEST_S:-540}
[ "${SANITIZE:-1}" != 0 ] && sanitize_float32 $T $W
gpu_tests ${TESTS:-experiments/gpu_s20_tests.txt} $T ${WORKERS:-8}
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
report_sanitizer $W
report_tests

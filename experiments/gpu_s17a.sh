# Session 17, device call 1 (and 2: DONE_JUNIT=junit.xml skips the tests that junit already holds; TESTS=file
# runs another order file):
# - the GPU tests that no run reached since session 15 (experiments/gpu_s17_tests.txt), GPU profile, outputs
#   poisoned, WORKERS processes;
# - compute-sanitizer racecheck and memcheck on the float32 (3xTF32) forward and backward defaults, one process
#   per tool and head_dim (64: two-level sums in shared slots; 128: red.global.add into dK and dV), so that each
#   has the call's whole limit to compile under the tool (session 16's were cut while compiling D = 128);
# - float32 N = 4096, head_dim 128, causal: the dK/dV kernel's flush every 32 k-steps (the default) against every
#   64 (atomic_dq.py --sums-ksteps 64), 3 interleaved rounds with SDPA EFFICIENT each, under one timing lock,
#   errors against float64;
# - Nsight Compute on the same float32 causal backward (delta, dK/dV, dQ kernels): time, speed of light,
#   occupancy of each, profiled under the same lock (SANITIZE=0 / KSTEPS=0 / PROFILE=0 skip those parts).
# Run: bash .gpu/env.sh bash experiments/gpu_s17a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__); import numba_flash.tc_forward; \
from numba_flash import compile_speed; print('compile_speed patches in place:', compile_speed.install())" >> $OUT/gpu.txt 2>&1
L=/tmp/s17.lock; W=$OUT/runs; mkdir -p $W
T=${TIME_S:-560}
if [ "${KSTEPS:-1}" != 0 ]; then
  A="--dtype float32 --shape 4,16,4096,128 --repeat 10 --interleave 3 --lock $L --default-only --causal yes"
  timeout -s INT $T python experiments/atomic_dq.py $A --out $W/k32 > $W/k32.log 2>&1 &
  timeout -s INT $T python experiments/atomic_dq.py $A --sums-ksteps 64 --out $W/k64 > $W/k64.log 2>&1 &
fi
if [ "${PROFILE:-1}" != 0 ]; then
  timeout -s INT $T ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
    --metrics gpu__time_duration.sum --csv --page details --log-file $W/ncu-f32-128-causal.csv \
    python experiments/profile_backward.py --shape 4,16,4096,128 --dtype float32 --causal --lock $L \
    > $W/ncu.log 2>&1 &
fi
if [ "${SANITIZE:-1}" != 0 ]; then
  for d in 64 128; do
    timeout -s INT $T compute-sanitizer --tool racecheck --racecheck-report all python experiments/sanitize_tc.py \
      --float32-only --head-dim $d > $W/racecheck-$d.log 2>&1 &
    timeout -s INT $T compute-sanitizer --tool memcheck --report-api-errors no python experiments/sanitize_tc.py \
      --float32-only --head-dim $d > $W/memcheck-$d.log 2>&1 &
  done
fi
grep -v '^#' ${TESTS:-experiments/gpu_s17_tests.txt} > /tmp/tests.txt
if [ -n "$DONE_JUNIT" ]; then  # drop what an earlier call's junit already holds
  python - "$DONE_JUNIT" /tmp/tests.txt <<'PY'
import html, re, sys
done = {html.unescape(m) for m in re.findall(r'<testcase classname="[^"]*" name="([^"]*)"', open(sys.argv[1]).read())}
ids = [t for t in open(sys.argv[2]).read().splitlines() if t.split("::", 1)[1] not in done]
open(sys.argv[2], "w").write("\n".join(ids) + "\n")
print(len(ids), "tests left")
PY
fi
IFS=$'\n'
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-560} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n ${WORKERS:-9} --tb=short -rf --junitxml=$OUT/junit.xml --durations=30 \
  $(cat /tmp/tests.txt) > $OUT/tests.log 2>&1 &
unset IFS
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
for f in $W/k*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|ratio|Error|error" $f | cut -c1-250; done
echo "== ncu"; tail -3 $W/ncu.log; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy" \
  $W/ncu-f32-128-causal.csv 2>/dev/null | cut -c1-200 | head -20
for f in $W/racecheck-*.log $W/memcheck-*.log; do echo "== $f"; grep -E "float32|ERROR SUMMARY|RACECHECK SUMMARY|Error|rror" $f | head; done
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
grep -E "^E " $OUT/tests.log | head -30

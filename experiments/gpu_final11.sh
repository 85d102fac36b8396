# Session 11, device call 4: the final kernels and defaults against SDPA, each process timing under one lock
# (untimed GPU work under the shared lock): forward, float16 and bfloat16, D = 64 (new default (128, 64, 2, 32))
# and D = 128 (tc_sweep.py); backward and forward+backward, float16 and bfloat16, D = 64 and 128, with the
# default given twice (an A/A: the rounds' spread), interleaved with SDPA flash (atomic_dq.py --interleave 3).
# Then the 16-bit odd-size oracle tests (GPU profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_final11.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/final.lock; W=/tmp/final; mkdir -p $W
run() {  # run NAME SCRIPT ARGS...
  local n=$1; shift
  timeout -s INT ${TIME_S:-330} python "$@" --lock $L --out $W/$n > $W/$n.log 2>&1
}
for dt in float16 bfloat16; do
  run fwd64-$dt experiments/tc_sweep.py --dtype $dt --head-dims 64 --causal both --configs 128,64,2,32 &
  run fwd128-$dt experiments/tc_sweep.py --dtype $dt --head-dims 128 --causal both --configs 128,32,2,32,reread &
done
run bwd64 experiments/atomic_dq.py --shape 4,32,4096,64 --dtype float16 --dtype bfloat16 --causal both --repeat 10 \
  --interleave 3 --bwd-config 64,64,2,16,reread,b3 &
run bwd128 experiments/atomic_dq.py --shape 4,16,4096,128 --dtype float16 --dtype bfloat16 --causal both --repeat 10 \
  --interleave 3 --bwd-config 64,32,2,16 &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
for n in fwd64-float16 fwd128-float16 fwd64-bfloat16 fwd128-bfloat16; do
  cat $W/$n/*.md 2>/dev/null | grep -E "^\| [0-9]" | cut -d'|' -f2-8,12; grep -E "Error|error" $W/$n.log | head -3
done
for n in bwd64 bwd128; do grep -E "causal=|numba_flash|sdpa|errors|Error|error" $W/$n.log | cut -c1-150; done
tar -czf $OUT/final.tgz -C $W .
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-170} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py -k "odd_sizes or bfloat16_kernels" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head; grep -E "^E " $OUT/tests.log | head

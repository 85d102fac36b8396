# Session 11, device call 1: the forward with scale * log2(e) inside the exponent (one FFMA per score),
# O rescaled only when a row's max moved (a warp vote per m-tile) and per-row band bounds on masked
# tiles; the backward with the same FFMA. Timings first (three processes compile side by side, time one
# at a time under a file lock), then the tensor-core oracle tests (GPU profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_lazy.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/timing.lock; W=/tmp/w; mkdir -p $W
timeout -s INT ${TIME_S:-330} python experiments/tc_sweep.py --head-dims 64 --causal both --lock $L --out $W/fwd64 \
  --configs 128,32,2,32 128,64,2,32,reread 128,64,2,32 > $OUT/fwd64.log 2>&1 &
timeout -s INT ${TIME_S:-330} python experiments/tc_sweep.py --head-dims 128 --causal both --lock $L --out $W/fwd128 \
  --configs 128,32,2,32,reread > $OUT/fwd128.log 2>&1 &
timeout -s INT ${TIME_S:-330} python experiments/atomic_dq.py --shape 4,32,4096,64 --dtype float16 --causal both \
  --repeat 10 --interleave 4 --bwd-config 64,64,2,16 --lock $L --out $W/bwd64 > $OUT/bwd64.log 2>&1 &
wait
cp $W/fwd64/*.json $OUT/fwd64.json; cp $W/fwd128/*.json $OUT/fwd128.json; cp $W/bwd64/*.json $OUT/bwd64.json
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $W/fwd64/*.md $W/fwd128/*.md 2>/dev/null | grep -E "^\|" | cut -d'|' -f1-8
grep -E "^\||TFLOP|error|Error" $OUT/bwd64.log | head -40 | cut -c1-180
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-220} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py -k "not compiles" > $OUT/tests.log 2>&1
grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
grep -E "passed|failed" $OUT/tests.log | tail -2
grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -30
grep -E "^E " $OUT/tests.log | head -20

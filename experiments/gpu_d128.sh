# Session 12, device call 1: the head_dim-128 16-bit forward with 64-key (and 48-key) tiles against the default
# (128, 32, 2, 32, reread), float16 and bfloat16, causal and not, each process timing under one lock (untimed
# GPU work under the shared lock); then float32 (3xTF32) at D = 128 against SDPA EFFICIENT (forward and
# forward+backward, errors vs float64), and the launch-bound occupancy test (its assertion changed in session 11).
# Run: bash .gpu/env.sh bash experiments/gpu_d128.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/d128.lock; W=/tmp/d128; mkdir -p $W
run() {  # run NAME SCRIPT ARGS...
  local n=$1; shift
  timeout -s INT ${TIME_S:-300} python "$@" --lock $L --out $W/$n > $W/$n.log 2>&1
}
for dt in float16 bfloat16; do
  run fwd128a-$dt experiments/tc_sweep.py --dtype $dt --head-dims 128 --causal both \
    --configs 128,32,2,32,reread 128,64,2,32,reread &
  run fwd128b-$dt experiments/tc_sweep.py --dtype $dt --head-dims 128 --causal both \
    --configs 128,48,2,32,reread 256,64,2,32,reread &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
for n in fwd128a-float16 fwd128b-float16 fwd128a-bfloat16 fwd128b-bfloat16; do
  cat $W/$n/*.md 2>/dev/null | grep -E "^\| [0-9]" | cut -d'|' -f2-8,12; grep -E "Error|error" $W/$n.log | head -3
done
timeout -s INT ${FP32_S:-170} python experiments/fp32_tensor_cores.py --shape 4,16,4096,128 --out $W/fp32_d128 \
  > $W/fp32_d128.log 2>&1
grep -v "^  File\|^    " $W/fp32_d128.log | grep -v "^wrote\|^/root" | tail -30
tar -czf $OUT/d128.tgz -C $W .
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST_S:-80} python -m pytest -v -p no:cacheprovider \
  -p no:randomly --tb=short -rf tests/test_tc.py -k "launch_bound" > $OUT/tests.log 2>&1
grep -E "passed|failed" $OUT/tests.log | tail -1; grep -E "^E " $OUT/tests.log | head

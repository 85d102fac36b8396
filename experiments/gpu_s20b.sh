# Session 20, device call: the block order (TensorCoreConfig.longest_first) against the default order and SDPA,
# then the checks that session 19 left (one call for both: machines were scarce).
# Phase 1, side by side:
# - tests/test_tc.py::test_longest_first_gives_the_same_bits (outputs poisoned), holding a shared lock on $L so
#   that no timing runs beside it;
# - experiments/block_order.py, one process per (dtype, head_dim), causal and not, forward and backward, 5
#   rotating rounds each, timed one process at a time under the exclusive lock on $L (they compile side by side);
#   the head_dim-128 16-bit one also times the 8-warp (256, 64) forward with longest_first under the causal band;
# - the float32 compile reports on the GPU image (the compile tests, NUMBA_FLASH_COMPILE_REPORTS; CPU only).
# Phase 2, in what is left of TIME_S: compute-sanitizer racecheck and memcheck on the float32 defaults at
# head_dim 64 and 128, and the GPU tests of experiments/gpu_s19_f32_tests.txt (GPU profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_s20b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
. experiments/gpu_parts.sh
START=$(date +%s); T=${TIME_S:-550}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s20.lock; W=$OUT/runs; mkdir -p $W; touch $L
NUMBA_FLASH_POISON=1 timeout -s INT $T flock -s $L python -m pytest -v -p no:cacheprovider -p no:randomly --tb=short \
  -rf tests/test_tc.py -k longest_first_gives > $W/bits.log 2>&1 &
NUMBA_FLASH_COMPILE_REPORTS=$OUT/compile_gpu.jsonl timeout -s INT $T python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 3 --tb=short -rf tests/test_tc.py -k "float32_tensor_core_backward_compiles or \
float32_tensor_core_forward_compiles or chains_leave" > $W/compile.log 2>&1 &
sleep 2
A="--rounds 5 --repeat 10 --lock $L"
PIDS=""
for run in "float16 128 --forward-config 256,64,2,32,reread,longest" "float16 64" "float32 128" "bfloat16 128" \
           "float32 64" "bfloat16 64"; do
  set -- $run; dt=$1; d=$2; shift 2
  timeout -s INT $T python experiments/block_order.py $A --dtype $dt --head-dims $d --out $W/$dt-$d "$@" \
    > $W/$dt-$d.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
LEFT=$(( T - ($(date +%s) - START) )); echo "phase 2: $LEFT s left" >> $OUT/gpu.txt
if [ $LEFT -gt 60 ]; then
  sanitize_float32 $LEFT $W
  gpu_tests experiments/gpu_s19_f32_tests.txt $LEFT 8
fi
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
echo "== bits"; grep -E "PASSED|FAILED|ERROR|^E " $W/bits.log | cut -c1-250 | head -20; tail -1 $W/bits.log
for f in $W/float*.log $W/bfloat*.log; do echo "== $f"; grep -vE "^\|" $f | grep -E "causal=|forward|backward|rror|differ" | cut -c1-260; done
echo "== compile"; grep -E "PASSED|FAILED|^E " $W/compile.log | cut -c1-250 | head -20; cat $OUT/compile_gpu.jsonl | cut -c1-400
report_sanitizer $W
report_tests

# Session 20, device call: the block order (TensorCoreConfig.longest_first) against the default order and SDPA.
# - tests/test_tc.py::test_longest_first_gives_the_same_bits (outputs poisoned), holding a shared lock on $L so
#   that no timing runs beside it;
# - experiments/block_order.py, one process per (dtype, head_dim), causal and not, forward and backward, 5
#   rotating rounds each, timed one process at a time under the exclusive lock on $L (they compile side by side);
#   the head_dim-128 16-bit one also times the 8-warp (256, 64) forward with longest_first under the causal band.
# Run: bash .gpu/env.sh bash experiments/gpu_s20b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/s20.lock; W=$OUT/runs; mkdir -p $W; touch $L
T=${TIME_S:-540}
NUMBA_FLASH_POISON=1 timeout -s INT $T flock -s $L python -m pytest -v -p no:cacheprovider -p no:randomly --tb=short \
  -rf tests/test_tc.py -k longest_first_gives > $OUT/tests.log 2>&1 &
sleep 2
A="--rounds 5 --repeat 10 --lock $L"
for run in "float16 128 --forward-config 256,64,2,32,reread,longest" "float16 64" "float32 128" "bfloat16 128" \
           "float32 64" "bfloat16 64"; do
  set -- $run; dt=$1; d=$2; shift 2
  timeout -s INT $T python experiments/block_order.py $A --dtype $dt --head-dims $d --out $W/$dt-$d "$@" \
    > $W/$dt-$d.log 2>&1 &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
grep -E "PASSED|FAILED|ERROR|^E " $OUT/tests.log | cut -c1-250 | head -20; tail -1 $OUT/tests.log
for f in $W/*.log; do echo "== $f"; grep -vE "^\|" $f | grep -E "causal=|forward|backward|rror|differ" | cut -c1-260; done

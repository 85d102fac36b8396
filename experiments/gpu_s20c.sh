# Not run yet: the block order (TensorCoreConfig.longest_first) in the backward under the causal band, which
# session 20's call did not reach, and the 8-warp (256, 64) forward longest first under it. One
# experiments/block_order.py process per (dtype, head_dim), compiling side by side, timing one at a time under
# the lock; nothing else uses the GPU meanwhile (session 20's call ran a test under a shared lock beside them,
# and its compiles held the lock for the whole call).
# Run: bash .gpu/env.sh bash experiments/gpu_s20c.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/s20c.lock; W=$OUT/runs; mkdir -p $W; touch $L; T=${TIME_S:-540}
A="--rounds 5 --repeat 10 --lock $L --causal yes"
for run in "float16 128 --passes backward forward --forward-config 256,64,2,32,reread,longest" \
           "float16 64 --passes backward" "float32 128 --passes backward" "float32 64 --passes backward" \
           "bfloat16 128 --passes backward"; do
  set -- $run; dt=$1; d=$2; shift 2
  timeout -s INT $T python experiments/block_order.py $A --dtype $dt --head-dims $d --out $W/$dt-$d "$@" \
    > $W/$dt-$d.log 2>&1 &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
for f in $W/*.log; do echo "== $f"; grep -vE "^\|" $f | grep -E "causal=|forward |backward |rror|differ" | cut -c1-300; done

# Session 13, device call 3: the new head_dim-128 backward default, (128, 64, 2, 16, split_d), against SDPA flash:
# backward and forward+backward, float16 and bfloat16, causal and not, one process per (dtype, causal) so that
# their compiles run side by side (atomic_dq.py --default-only --interleave 3, one timing lock).
# Run: bash .gpu/env.sh bash experiments/gpu_s13c3.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/c3.lock; W=/tmp/c3; mkdir -p $W
for run in ${RUNS:-float16:yes bfloat16:no bfloat16:yes float16:no}; do
  dt=${run%%:*}; c=${run##*:}
  timeout -s INT ${TIME_S:-500} python experiments/atomic_dq.py --shape 4,16,4096,128 --dtype $dt --causal $c \
    --default-only --repeat 10 --interleave 3 --lock $L --out $W/bwd128-$dt-$c > $W/bwd128-$dt-$c.log 2>&1 &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
tar -czf $OUT/c3.tgz -C $W .
for f in $W/bwd128-*.log; do echo "== $f"; grep -E "causal=|numba_flash|sdpa|errors|Error|error" $f | cut -c1-170; done

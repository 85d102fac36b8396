# Session 22, for a short device call (little device time left after failed starts): gpu_s21a.sh's float32
# atomic-dQ timings at head_dim 128 only, the shape whose target is short (B, H, N = 4, 16, 4096), causal and
# not, one atomic_dq.py process each (compiling side by side, timing one at a time under the lock), TIME_S seconds.
# BWD: the --bwd-config arguments (default both atomic configs of gpu_s21a.sh).
# Run: bash .gpu/env.sh bash experiments/gpu_s22b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/s22b.lock; touch $L
for c in no yes; do
  timeout -s INT ${TIME_S:-230} python experiments/atomic_dq.py --dtype float32 --repeat 10 --interleave 3 --lock $L \
    --shape 4,16,4096,128 --causal $c ${BWD:---bwd-config 64,16,2,16,atomic --bwd-config 128,16,2,16,atomic} \
    --out $OUT/d128-$c > $OUT/d128-$c.log 2>&1 &
done
wait
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
cat $OUT/gpu.txt
for f in $OUT/*.log; do echo "== $f"; grep -E "^\|" $f | head -40; grep -iE "error|Traceback" $f | head -5; done

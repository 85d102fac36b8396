# Session 21, not run yet: the float32 (3xTF32) backward with atomic dQ (5 products instead of 7; dQ by
# red.global.add straight into dq) against the two-kernel default and SDPA's EFFICIENT backend, forward+backward
# and backward, N = 4096, head_dim 64 (B, H = 4, 32) and 128 (4, 16), causal and not: one atomic_dq.py process
# per (head_dim, causal), compiling side by side, each interleaving its configs with SDPA in 3 rounds, timing one
# process at a time under the lock; errors against float64 beside SDPA's, and two atomic runs' dq spread.
# Configs: the default with atomic_dq (64 keys, 4 warps) and 128 keys in 8 warps (2 dQ units per warp instead of
# 4: CI's wheels spill less, none at head_dim 64). Nothing else uses the GPU meanwhile.
# HEAD_DIMS (default "128 64"; session 22: "128" alone for a short call, where the target is short), BWD (the
# --bwd-config arguments, default the two above), TIME_S (each process's limit, default 540).
# Run: bash .gpu/env.sh bash experiments/gpu_s21a.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
python -c "import numba, numba_cuda, cupy, torch; print('numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, \
'cupy', cupy.__version__, 'torch', torch.__version__)" >> $OUT/gpu.txt 2>&1
L=/tmp/s21a.lock; W=$OUT/runs; mkdir -p $W; touch $L; T=${TIME_S:-540}
A="--dtype float32 --repeat 10 --interleave 3 --lock $L"
for d in ${HEAD_DIMS:-128 64}; do
  case $d in
    128) shape=4,16,4096,128; n=16 ;;
    64) shape=4,32,4096,64; n=32 ;;
    *) echo "HEAD_DIMS: 64 or 128, got $d" >&2; exit 2 ;;
  esac
  for c in no yes; do
    timeout -s INT $T python experiments/atomic_dq.py $A --shape $shape --causal $c \
      ${BWD:---bwd-config 64,$n,2,16,atomic --bwd-config 128,$n,2,16,atomic} --out $W/d$d-$c > $W/d$d-$c.log 2>&1 &
  done
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
cat $OUT/gpu.txt
for f in $W/*.log; do echo "== $f"; grep -E "^\|" $f | head -30; grep -iE "error|Traceback" $f | head -5; done

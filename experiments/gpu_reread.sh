# Session 9, device call 1: Q fragments re-read from shared memory per key tile (TensorCoreConfig
# reread_q) against the register-held ones: the forward at head_dim 64 and 128 (tc_sweep, SDPA flash
# and cuDNN on the same tensors) and the backward's dQ kernel (atomic_dq.py, SDPA flash), five
# processes compiling side by side, timing one at a time under a lock.
# Run: bash .gpu/env.sh bash experiments/gpu_reread.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
T=500
timeout -s INT $T python experiments/tc_sweep.py --lock $LOCK --head-dims 64 --out $OUT/fwd64 \
  --configs 128,32,2,32 128,32,2,32,reread 64,64,2,16,reread 128,64,2,32,reread > $OUT/fwd64.log 2>&1 &
timeout -s INT $T python experiments/tc_sweep.py --lock $LOCK --head-dims 128 --out $OUT/fwd128 \
  --configs 64,32,2,16 64,32,2,16,reread 64,64,2,16,reread > $OUT/fwd128.log 2>&1 &
timeout -s INT $T python experiments/tc_sweep.py --lock $LOCK --head-dims 128 --out $OUT/fwd128b \
  --configs 64,64,2,16 128,64,2,16,reread 128,32,2,32,reread > $OUT/fwd128b.log 2>&1 &
timeout -s INT $T python experiments/atomic_dq.py --lock $LOCK --shape 4,16,4096,128 \
  --bwd-config 64,32,2,16,reread --out $OUT/bwd128 > $OUT/bwd128.log 2>&1 &
timeout -s INT $T python experiments/atomic_dq.py --lock $LOCK --shape 4,32,4096,64 \
  --bwd-config 64,64,2,16,reread --out $OUT/bwd64 > $OUT/bwd64.log 2>&1 &
wait
for f in fwd64 fwd128 fwd128b; do grep "^|" $OUT/$f.log | tail -12; done
for f in bwd128 bwd64; do grep -E "numba_flash|sdpa|error" $OUT/$f.log | tail -14; done

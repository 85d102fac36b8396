# Session 10, device call 1: a launch bound of 3 blocks per SM (TensorCoreConfig min_blocks, "b3")
# on the forward and dQ kernels, against the defaults: the 16-bit forward at head_dim 64 and 128
# (tc_sweep, SDPA flash and cuDNN on the same tensors), the 16-bit backward (atomic_dq.py, SDPA
# flash) and float32 (fp32_tensor_cores.py, SDPA efficient); processes compile side by side and
# time one at a time under a lock.
# Run: bash .gpu/env.sh bash experiments/gpu_blocks.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
T=${T:-540}
timeout -s INT $T python experiments/atomic_dq.py --lock $LOCK --shape 4,32,4096,64 \
  --bwd-config 64,64,2,16,reread,b3 --bwd-config 64,64,2,16,reread --out $OUT/bwd64 > $OUT/bwd64.log 2>&1 &
timeout -s INT $T python experiments/atomic_dq.py --lock $LOCK --shape 4,16,4096,128 \
  --bwd-config 64,32,2,16,reread,b3 --out $OUT/bwd128 > $OUT/bwd128.log 2>&1 &
timeout -s INT $T python experiments/tc_sweep.py --lock $LOCK --head-dims 64 --out $OUT/fwd64 \
  --configs 128,32,2,32 64,64,2,16,reread,b3 64,32,2,16,b3 64,64,2,16,b3 > $OUT/fwd64.log 2>&1 &
timeout -s INT $T python experiments/tc_sweep.py --lock $LOCK --head-dims 128 --out $OUT/fwd128 \
  --configs 128,32,2,32,reread 64,32,2,16,reread,b3 > $OUT/fwd128.log 2>&1 &
timeout -s INT $T python experiments/fp32_tensor_cores.py --lock $LOCK --shape 4,16,4096,128 --causal no \
  --config 64,16,2,16,b3 --config 64,16,2,16 --bwd-config 64,16,2,16,b3 --out $OUT/fp32 > $OUT/fp32.log 2>&1 &
wait
for f in fwd64 fwd128; do grep "^|" $OUT/$f.log | tail -12; done
for f in bwd64 bwd128; do grep -E "numba_flash|sdpa|error|^\|" $OUT/$f.log | tail -24; done
grep -E "numba_flash|sdpa|error" $OUT/fp32.log | tail -20

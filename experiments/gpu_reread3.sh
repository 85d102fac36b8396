# Session 9, device call 3: speed against SDPA after the head_dim-128 forward default became
# (128, 32, 2, 32, reread_q): float16 and bfloat16, forward and forward+backward, causal and not, the
# speed issue's shapes, one process; then the host time of a tiny call (no per-call seed words without
# dropout since this session).
# Run: bash .gpu/env.sh bash experiments/gpu_reread3.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout -s INT 500 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 \
  --dtype bfloat16 --impl numba_flash --impl torch_flash --impl torch_cudnn --causal both --no-plot --max-total 420 \
  --out $OUT/bench > $OUT/bench.log 2>&1
tail -45 $OUT/bench.log

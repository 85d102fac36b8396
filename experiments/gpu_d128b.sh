# Session 12, device call 2: call 1 (gpu_d128.sh) ran out of time in its cold compiles; this one times fewer
# configs for longer: the head_dim-128 16-bit forward, default (128, 32, 2, 32, reread) against one block of
# 8 warps per SM, (256, 64, 2, 32, reread) (fp16 and bf16), and (256, 32 / 48, 2, 32, reread) (fp16), causal
# and not, under one timing lock; then float32 (3xTF32) at D = 128 against SDPA EFFICIENT.
# Run: bash .gpu/env.sh bash experiments/gpu_d128b.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/d128.lock; W=/tmp/d128b; mkdir -p $W
run() {  # run NAME SCRIPT ARGS...
  local n=$1; shift
  timeout -s INT ${TIME_S:-380} python "$@" --lock $L --out $W/$n > $W/$n.log 2>&1
}
for dt in float16 bfloat16; do
  run fwd128-$dt experiments/tc_sweep.py --dtype $dt --head-dims 128 --causal both \
    --configs 256,64,2,32,reread 128,32,2,32,reread &
done
run fwd128c-float16 experiments/tc_sweep.py --dtype float16 --head-dims 128 --causal both \
    --configs 256,32,2,32,reread 256,48,2,32,reread &
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
timeout -s INT ${FP32_S:-190} python experiments/fp32_tensor_cores.py --shape 4,16,4096,128 --out $W/fp32_d128 \
  > $W/fp32_d128.log 2>&1
tar -czf $OUT/d128b.tgz -C $W .
for n in fwd128-float16 fwd128-bfloat16 fwd128c-float16; do
  grep "^{" $W/$n.log | python -c "import sys, ast; [print(d['dtype'], d['causal'], d['config'], round(d['tflops'], 1), round(d['vs_flash'], 3), d['registers'], d['blocks_per_sm']) for d in map(ast.literal_eval, sys.stdin)]"
done
grep -v "^  File\|^    " $W/fp32_d128.log | grep -v "^wrote\|^/root" | tail -30

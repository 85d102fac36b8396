# Session 11, device call 2: A/B of two versions of the package on one GPU, each process against SDPA.
# base = 3042dc8 (session 10's main, unpacked into ab/base by `git archive 3042dc8 numba_flash | tar -x -C ab/base`),
# new = the working tree: forward with the FFMA exponent, the O rescale only where a row max moved and per-row
# band bounds; both passes' tile copier with an unpredicated path for whole tiles; the dK/dV kernel's
# query-tile counters and fixed-count lse/delta copies; the backward's FFMA exponent and per-row band bounds.
# Eight processes compile side by side and time one at a time under one lock.
# Run: bash .gpu/env.sh bash experiments/gpu_ab.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/ab.lock; W=/tmp/ab; mkdir -p $W
run() {  # run VERSION NAME SCRIPT ARGS...
  local v=$1 n=$2; shift 2
  if [ $v = base ]; then set -- experiments/with_package.py ab/base "$@"; fi
  timeout -s INT ${TIME_S:-520} python "$@" --lock $L --out $W/$v-$n > $W/$v-$n.log 2>&1
}
for v in base new; do
  run $v fwd64 experiments/tc_sweep.py --head-dims 64 --causal both --configs 128,32,2,32 128,64,2,32 &
  run $v fwd128 experiments/tc_sweep.py --head-dims 128 --causal both --configs 128,32,2,32,reread &
  run $v bwd64 experiments/atomic_dq.py --shape 4,32,4096,64 --causal both --repeat 10 --interleave 3 \
    --bwd-config 64,64,2,16,reread,b3 &
  run $v bwd128 experiments/atomic_dq.py --shape 4,16,4096,128 --causal both --repeat 10 --interleave 3 \
    --bwd-config 64,32,2,16 &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
for v in base new; do
  for n in fwd64 fwd128; do echo "== $v $n"; cat $W/$v-$n/*.md 2>/dev/null | grep -E "^\| [0-9]" | cut -d'|' -f2-7; done
  for n in bwd64 bwd128; do echo "== $v $n"; grep -E "numba_flash|sdpa|errors|Error|error" $W/$v-$n.log | cut -c1-150; done
done
tar -czf $OUT/ab.tgz -C $W .

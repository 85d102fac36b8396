# Session 8, device call 2: the atomic-dQ backward timed alone (no tests beside it), Nsight Compute on
# the deterministic and the atomic dK/dV kernels (why the atomic one is slower), and the forward with
# its query blocks in reverse order (causal: longest blocks first) against SDPA flash.
# Run: bash .gpu/env.sh bash experiments/gpu_atomic_dq2.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
LOCK=$(mktemp)
timeout -s INT 240 python experiments/atomic_dq.py --shape 4,32,4096,64 --lock $LOCK --out $OUT/d64 > $OUT/d64.log 2>&1 &
timeout -s INT 240 python experiments/atomic_dq.py --shape 4,16,4096,128 --lock $LOCK --out $OUT/d128 > $OUT/d128.log 2>&1 &
wait
tail -22 $OUT/d64.log; tail -22 $OUT/d128.log
timeout -s INT 150 ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
  python experiments/profile_backward.py --shape 4,32,4096,64 --config 64,64,2,16,0 --config 64,32,2,16,1 \
  > $OUT/ncu_d64.txt 2>&1
grep -E "profiled|Duration|Compute \(SM\) Throughput|L2 Cache Throughput|Memory Throughput|Stall|Warp Cycles|==PROF==|kernel|Block Size" $OUT/ncu_d64.txt | head -60
timeout -s INT 170 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 \
  --impl numba_flash --impl torch_flash --pass forward --causal both --no-plot --no-host-overhead --max-total 120 \
  --out $OUT/fwd_reversed > $OUT/fwd_reversed.log 2>&1
grep -E "^\| forward" $OUT/fwd_reversed/bench_speed.md | head -8

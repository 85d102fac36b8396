# Device call 2 of 2: speed against SDPA (float16 and bfloat16, forward and forward+backward), adapter overhead.
set -x
timeout -s INT 420 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 --dtype bfloat16 --impl numba_flash --impl torch_flash --impl torch_cudnn --causal both --no-plot --max-total 330 --out $OUT/bench > $OUT/bench.log 2>&1; tail -60 $OUT/bench.log
timeout -s INT 90 python experiments/torch_overhead.py --out $OUT/overhead > $OUT/overhead.log 2>&1; tail -14 $OUT/overhead.log

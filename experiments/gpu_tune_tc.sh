# Device call 4: the tuner over tensor-core configs (four problems at once: compiles overlap, timings
# take turns), then the launch-mode A/B of the host-time breakdown on a quiet machine.
set -x
export PYTHONUNBUFFERED=1
C="--batch 4 --seqlen 4096 --dtype float16 --kind tensor_core --budget 330 --check-seqlen 512"
timeout -s INT 400 python experiments/tune_parallel.py --out $OUT/tune_tc \
  "$C --heads 32 --head-dim 64 --pass forward --config 128,32,2,32 --config 128,64,2,32 --config 64,64,2,16 --config 128,32,1,32 --config 64,32,2,16" \
  "$C --heads 16 --head-dim 128 --pass forward --config 64,32,2,16 --config 64,64,2,16 --config 32,32,2,16 --config 128,32,2,16 --config 64,16,2,16" \
  "$C --heads 32 --head-dim 64 --pass backward --config 64,64,2,16 --config 128,64,2,16 --config 64,32,2,16 --config 128,32,2,16" \
  "$C --heads 16 --head-dim 128 --pass backward --config 64,32,2,16 --config 64,64,2,16 --config 128,32,2,16 --config 32,32,2,16"
for f in $OUT/tune_tc/*.log; do grep -E "best:|timed|stored" $f; done
cat $OUT/tune_tc/*/tune_*.md | grep -E "^\|" | head -40
timeout -s INT 170 python experiments/torch_overhead_breakdown.py --out $OUT/breakdown > $OUT/breakdown.log 2>&1; tail -26 $OUT/breakdown.log

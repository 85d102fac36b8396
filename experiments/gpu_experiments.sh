#!/usr/bin/env bash
# Run the experiments of the research-instrument issue on the GPU, in two batches that each fit
# one 10-minute device call, and pack their results for the trip back.
#   bash .gpu/env.sh bash experiments/gpu_experiments.sh 1    # bench_speed, hbm_traffic, memory_hierarchy
#   bash .gpu/env.sh bash experiments/gpu_experiments.sh 2    # memory_scaling, recomputation, block sweep, tune, smoke tests
set -uo pipefail
batch=${1:-1}
out=${OUT:-/tmp/out}
res=experiments/results
mkdir -p "$out" "$res"
log="$out/batch$batch.log"
run() {
    echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$log"
    local t0=$SECONDS
    "$@" > "$out/step.log" 2>&1; local rc=$?
    cat "$out/step.log" >> "$log"; tail -n 30 "$out/step.log"
    echo "== exit $rc, wall $((SECONDS - t0)) s" | tee -a "$log"
}
if [ "$batch" = 1 ]; then
    run python experiments/bench_speed.py --out $res/bench_speed
    run python experiments/hbm_traffic.py --out $res/hbm_traffic
    run python experiments/memory_hierarchy.py --out $res/memory_hierarchy
else
    run python experiments/memory_scaling.py --out $res/memory_scaling
    run python experiments/recomputation.py --out $res/recomputation
    run python experiments/block_size_sweep.py --out $res/block_size_sweep --budget-per-shape 40
    run python -m numba_flash.tune --batch 4 --heads 16 --seqlen 2048 --head-dim 64 --budget 40 \
        --out $res/tune --cache-file $res/tune/tuning.json
    HYPOTHESIS_PROFILE=gpu run python -m pytest -q -p no:cacheprovider -n 8 tests/test_exp_bench.py tests/test_exp_io.py \
        tests/test_exp_seed_claims.py tests/test_exp_tune.py tests/test_standard.py tests/test_api.py tests/test_cli.py
fi
rm -f "$out/step.log"
tar czf "$out/results$batch.tgz" $res
ls -la "$out"

# Device call 5: forward speed with the tuned tensor-core configs (the tuner's winners, stored in
# experiments/results/tune_tc-2026-11-24/tuning.json) against SDPA in one process, with the bench's
# host-overhead measurement; the adapter overhead and host profile; then the tests this session's
# changes touch, with the GPU Hypothesis profile. Fewer than 16 files under $OUT (the rest do not come back).
set -x
export PYTHONUNBUFFERED=1
NUMBA_FLASH_TUNING_CACHE=experiments/results/tune_tc-2026-11-24/tuning.json timeout -s INT 170 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 --impl numba_flash --impl torch_flash --impl torch_cudnn --pass forward --causal no --no-plot --out $OUT/bench > $OUT/bench.log 2>&1; tail -30 $OUT/bench.log
timeout -s INT 130 python - > $OUT/timing.log 2>&1 <<'PY'
import importlib.util, os, sys
def load(name):
    spec = importlib.util.spec_from_file_location(name, f"experiments/{name}.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
out = os.environ["OUT"]
load("torch_overhead").main(["--out", f"{out}/overhead"])
with open(f"{out}/host_profile.txt", "w") as f:
    old, sys.stdout = sys.stdout, f
    try:
        load("host_profile").main()
    finally:
        sys.stdout = old
PY
tail -12 $OUT/timing.log; grep -E "us per|of which" $OUT/host_profile.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 240 python -m pytest -q -p no:cacheprovider -n 12 -rfs tests/test_plan.py tests/test_launch.py tests/test_api.py tests/test_exp_tune.py tests/test_torch.py tests/test_tc.py > $OUT/tests.log 2>&1; tail -25 $OUT/tests.log

# Device call 2: the host-time experiments in one process (each kernel compiled once: ~30 s per
# tensor-core variant), then memcheck without the cuda-python binding's symbol-probe API errors,
# and the adapter tests the first call's time limit cut.
set -x
timeout -s INT 330 python - > $OUT/timing.log 2>&1 <<'PY'
import importlib.util, sys, time
sys.path.insert(0, "experiments")
def load(name):
    spec = importlib.util.spec_from_file_location(name, f"experiments/{name}.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
import os
out = os.environ["OUT"]
t = time.time()
load("torch_overhead").main(["--out", f"{out}/overhead"]); print("overhead done", time.time() - t, flush=True)
load("torch_overhead_breakdown").main(["--out", f"{out}/breakdown"]); print("breakdown done", time.time() - t, flush=True)
with open(f"{out}/host_profile.txt", "w") as f:
    old, sys.stdout = sys.stdout, f
    try:
        load("host_profile").main()
    finally:
        sys.stdout = old
print("profile done", time.time() - t, flush=True)
PY
tail -40 $OUT/timing.log; grep -E "us per|of which" $OUT/host_profile.txt
(timeout -s INT 300 compute-sanitizer --tool memcheck --report-api-errors no python experiments/sanitize_tc.py --backward-only > $OUT/memcheck.log 2>&1) &
NUMBA_FLASH_POISON=1 timeout -s INT 240 python -m pytest -v -p no:cacheprovider -n 8 -rfs tests/test_torch.py tests/test_plan.py > $OUT/tests.log 2>&1; grep -c PASSED $OUT/tests.log; grep -E "FAILED|ERROR" $OUT/tests.log | head -20; tail -3 $OUT/tests.log
wait
tail -4 $OUT/memcheck.log

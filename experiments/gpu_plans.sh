# Device call: launch plans (host time) and the adapter running plans directly.
# Quiet timing first (host-time numbers need an idle CPU), then tests and sanitizers in parallel.
set -x
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
timeout -s INT 120 python experiments/torch_overhead.py --out $OUT/overhead > $OUT/overhead.log 2>&1; tail -12 $OUT/overhead.log
timeout -s INT 90 python experiments/torch_overhead_breakdown.py --out $OUT/breakdown > $OUT/breakdown.log 2>&1; tail -20 $OUT/breakdown.log
timeout -s INT 90 python experiments/host_profile.py > $OUT/host_profile.txt 2>&1; grep -E "us per|of which" $OUT/host_profile.txt
(timeout -s INT 420 compute-sanitizer --tool racecheck --racecheck-report all python experiments/sanitize_tc.py --backward-only > $OUT/racecheck.log 2>&1) &
(timeout -s INT 420 compute-sanitizer --tool memcheck python experiments/sanitize_tc.py --backward-only > $OUT/memcheck.log 2>&1) &
export NUMBA_FLASH_POISON=1
timeout -s INT 400 python -m pytest -v -p no:cacheprovider -n 10 -rfs tests/test_plan.py tests/test_api.py tests/test_launch.py tests/test_torch.py > $OUT/tests.log 2>&1; grep -c PASSED $OUT/tests.log; grep -E "FAILED|ERROR" $OUT/tests.log | head -20; tail -3 $OUT/tests.log
wait
tail -5 $OUT/racecheck.log; tail -5 $OUT/memcheck.log

# Device call 2: the host-time experiments in one process (each kernel compiled once: ~30 s per
# tensor-core variant), then memcheck without the cuda-python binding's symbol-probe API errors,
# and the adapter tests the first call's time limit cut. (Rewritten after the run to use
# experiments/in_one_process.py; the run inlined the same loader.)
set -x
timeout -s INT 330 python experiments/in_one_process.py "torch_overhead --out $OUT/overhead" "torch_overhead_breakdown --out $OUT/breakdown" "host_profile > $OUT/host_profile.txt" > $OUT/timing.log 2>&1
tail -40 $OUT/timing.log; grep -E "us per|of which" $OUT/host_profile.txt
(timeout -s INT 300 compute-sanitizer --tool memcheck --report-api-errors no python experiments/sanitize_tc.py --backward-only > $OUT/memcheck.log 2>&1) &
NUMBA_FLASH_POISON=1 timeout -s INT 240 python -m pytest -v -p no:cacheprovider -n 8 -rfs tests/test_torch.py tests/test_plan.py > $OUT/tests.log 2>&1; grep -c PASSED $OUT/tests.log; grep -E "FAILED|ERROR" $OUT/tests.log | head -20; tail -3 $OUT/tests.log
wait
tail -4 $OUT/memcheck.log

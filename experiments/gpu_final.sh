# Device call 5: forward speed with the tuned tensor-core configs (the tuner's winners, stored in
# experiments/results/tune_tc-2026-11-24/tuning.json) against SDPA in one process, with the bench's
# host-overhead measurement; the adapter overhead and host profile; then the tests this session's
# changes touch, with the GPU Hypothesis profile. Fewer than 16 files under $OUT (the rest do not come back).
# (Rewritten after the run to use experiments/in_one_process.py; the run inlined the same loader.)
set -x
export PYTHONUNBUFFERED=1
NUMBA_FLASH_TUNING_CACHE=experiments/results/tune_tc-2026-11-24/tuning.json timeout -s INT 170 python experiments/bench_speed.py --shape 4,32,4096,64 --shape 4,16,4096,128 --dtype float16 --impl numba_flash --impl torch_flash --impl torch_cudnn --pass forward --causal no --no-plot --out $OUT/bench > $OUT/bench.log 2>&1; tail -30 $OUT/bench.log
timeout -s INT 130 python experiments/in_one_process.py "torch_overhead --out $OUT/overhead" "host_profile > $OUT/host_profile.txt" > $OUT/timing.log 2>&1
tail -12 $OUT/timing.log; grep -E "us per|of which" $OUT/host_profile.txt
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT 240 python -m pytest -q -p no:cacheprovider -n 12 -rfs tests/test_plan.py tests/test_launch.py tests/test_api.py tests/test_exp_tune.py tests/test_torch.py tests/test_tc.py > $OUT/tests.log 2>&1; tail -25 $OUT/tests.log

# Session 11, device call 3: the forward A/B again, now with untimed GPU work under a shared lock
# (timing.shared: call 2's untimed runs overlapped other processes' timings), three versions:
#   base  = 3042dc8 (session 10) with this session's timing.py (for timing.shared), in ab/base;
#   eager = the working tree with O rescaled on every tile (the warp vote replaced by `if True`), in ab/eager;
#   new   = the working tree.
# Then the tensor-core tests the first call did not reach and the feature suite (GPU profile, poisoned outputs).
# Run: bash .gpu/env.sh bash experiments/gpu_ab2.sh   ($OUT: the device tool's output folder)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
L=/tmp/ab.lock; W=/tmp/ab2; mkdir -p $W
run() {  # run VERSION NAME SCRIPT ARGS...
  local v=$1 n=$2; shift 2
  if [ $v != new ]; then set -- experiments/with_package.py ab/$v "$@"; fi
  timeout -s INT ${TIME_S:-300} python "$@" --lock $L --out $W/$v-$n > $W/$v-$n.log 2>&1
}
for v in base eager new; do
  run $v fwd64 experiments/tc_sweep.py --head-dims 64 --causal both --configs 128,32,2,32 128,64,2,32 &
  run $v fwd128 experiments/tc_sweep.py --head-dims 128 --causal both --configs 128,32,2,32,reread &
done
wait
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $OUT/gpu.txt
for v in base eager new; do
  for n in fwd64 fwd128; do echo "== $v $n"; cat $W/$v-$n/*.md 2>/dev/null | grep -E "^\| [0-9]" | cut -d'|' -f2-7,11; done
done
tar -czf $OUT/ab2.tgz -C $W .
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST1_S:-150} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_tc.py -k "not compiles and not tensor_core_kernels_match_oracle_at_odd" \
  > $OUT/tests_tc.log 2>&1
HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT ${TEST2_S:-150} python -m pytest -v -p no:cacheprovider \
  -p no:randomly -n 15 --tb=short -rf tests/test_features.py > $OUT/tests_features.log 2>&1
for f in $OUT/tests_tc.log $OUT/tests_features.log; do
  echo "== $f"; grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $f | awk '{print $1}' | sort | uniq -c
  grep -E "passed|failed" $f | tail -1; grep -oE "FAILED tests/[^ ]+" $f | sort -u | head -20; grep -E "^E " $f | head -10
done

# Parts the device scripts share (source it: . experiments/gpu_parts.sh). Each starts its work in the background;
# the caller waits. $OUT: the device tool's output folder.

# sanitize_float32 LIMIT DIR [--atomic]: compute-sanitizer racecheck and memcheck on the float32 (3xTF32) forward
# and backward defaults (--atomic: the backward's with atomic dQ), one process per tool and head_dim (64, 128),
# each LIMIT seconds, logs in DIR (racecheck-64.log ...; with --atomic racecheck-64-atomic.log ...).
sanitize_float32() {
  local tag=${3:+-${3#--}}
  for d in 64 128; do
    timeout -s INT $1 compute-sanitizer --tool racecheck --racecheck-report all python \
      experiments/sanitize_tc.py --float32-only --head-dim $d $3 > $2/racecheck-$d$tag.log 2>&1 &
    timeout -s INT $1 compute-sanitizer --tool memcheck --report-api-errors no python \
      experiments/sanitize_tc.py --float32-only --head-dim $d $3 > $2/memcheck-$d$tag.log 2>&1 &
  done
}

# gpu_tests LIST LIMIT WORKERS: the test ids of LIST (a file; '#' lines skipped) with the GPU Hypothesis profile and
# outputs poisoned, WORKERS processes, LIMIT seconds; $OUT/tests.log and $OUT/junit.xml.
gpu_tests() {
  grep -v '^#' $1 > /tmp/tests.txt
  local IFS=$'\n'
  HYPOTHESIS_PROFILE=gpu NUMBA_FLASH_POISON=1 timeout -s INT $2 python -m pytest -v -p no:cacheprovider \
    -p no:randomly -n $3 --tb=short -rf --junitxml=$OUT/junit.xml --durations=30 \
    $(cat /tmp/tests.txt) > $OUT/tests.log 2>&1 &
}

# report_sanitizer DIR, report_tests: what those printed, in short.
report_sanitizer() {
  for f in $1/racecheck-*.log $1/memcheck-*.log; do
    echo "== $f"; grep -E "float32|ERROR SUMMARY|RACECHECK SUMMARY|rror" $f | head -5
  done
}
report_tests() {
  echo "== tests"; grep -oE "(PASSED|FAILED|SKIPPED|ERROR) tests/[^ ]+" $OUT/tests.log | awk '{print $1}' | sort | uniq -c
  tail -2 $OUT/tests.log; grep -oE "FAILED tests/[^ ]+" $OUT/tests.log | sort -u | head -20
  grep -E "^E " $OUT/tests.log | head -30
}

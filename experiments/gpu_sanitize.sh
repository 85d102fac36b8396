set -x
timeout -s INT 250 compute-sanitizer --tool racecheck --racecheck-report all python experiments/sanitize_tc.py 2>&1 | tail -6
timeout -s INT 250 compute-sanitizer --tool memcheck python experiments/sanitize_tc.py 2>&1 | tail -6

#!/usr/bin/env bash
# The GPU check of a kernel change, in one device call: versions, the whole test suite with the
# GPU Hypothesis profile (spread over CPU processes with pytest-xdist when it is installed), and
# the demo at a real size. Logs go to ${OUT:-experiments/results/raw}. TESTS="-k 'not exp_' tests"
# (say) runs part of the suite.
#   on the device machine:  bash .gpu/env.sh bash experiments/gpu_suite.sh
set -uo pipefail
out=${OUT:-experiments/results/raw}
mkdir -p "$out"
python -m numba_flash.cli info 2>&1 | tee "$out/info.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$out/info.txt"
xdist=""
python -c "import xdist" 2>/dev/null && xdist="-n ${WORKERS:-12}"
date -u +"start %Y-%m-%dT%H:%M:%SZ" | tee "$out/pytest.txt"
HYPOTHESIS_PROFILE=gpu timeout "${PYTEST_TIMEOUT:-420}" python -m pytest -q -p no:cacheprovider $xdist \
    --junitxml="$out/junit.xml" --durations=15 ${TESTS:-tests} 2>&1 | tee -a "$out/pytest.txt"
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$out/pytest.txt"
for args in "" "--causal" "--dtype float32 --head-dim 128 --seqlen 1024"; do
    echo "== numba-flash demo $args" | tee -a "$out/demo.txt"
    python -m numba_flash.cli demo $args 2>&1 | tee -a "$out/demo.txt"
done
